//! `podrun server`: the store, the PKI and admin kubeconfig, the API on HTTPS (HTTP/2
//! and HTTP/1.1), the in-process controllers, and a graceful stop.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::api::auth::{self, kubeconfig, pki};
use crate::api::kubelet::KubeletClient;
use crate::api::{Api, ApiConfig};
use crate::store::{self, Store};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Everything the server keeps: the embedded database, the PKI, admin.conf.
    pub root: PathBuf,
    pub bind_address: IpAddr,
    pub secure_port: u16,
    /// The address clients and nodes use; the first non-loopback address of the host
    /// when not given.
    pub advertise_address: Option<IpAddr>,
    /// etcd v3 endpoints; the embedded store when empty.
    pub etcd_servers: Vec<String>,
    pub service_cluster_ip_range: IpNet,
    pub service_node_port_range: (u16, u16),
    /// Another place to write the admin kubeconfig to (/etc/podrun/admin.conf for the
    /// default root).
    pub admin_kubeconfig_copy: Option<PathBuf>,
    /// Run the scheduler and the controllers in this process (`--controllers`).
    pub controllers: bool,
    /// Node IPAM: each Node's pod range from this cluster CIDR (None: nodes keep what
    /// they are given).
    pub node_cidrs: Option<crate::controllers::nodeipam::CidrConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("certificates: {0}")]
    Pki(String),
    #[error("start-up: {0}")]
    Bootstrap(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The address to advertise: the one asked for, else the bind address when it is a
/// real one, else the address of the host's default route, else loopback.
fn advertise(config: &ServerConfig) -> IpAddr {
    if let Some(a) = config.advertise_address {
        return a;
    }
    if !config.bind_address.is_unspecified() {
        return config.bind_address;
    }
    // The source address the kernel picks for an outside destination; nothing is sent.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

const HEAP_TRIM_EVERY: Duration = Duration::from_secs(5);

/// Returns the allocator's free memory to the system.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// kube-apiserver's --etcd-compaction-interval default.
const ETCD_COMPACT_EVERY: Duration = Duration::from_secs(5 * 60);

/// Compacts etcd's history as kube-apiserver does: each period, up to the revision seen
/// at the start of the previous one, so watches can resume across at least one period.
/// Several servers on one etcd may all do it; compacting a revision twice is harmless.
async fn compact_etcd(store: store::etcd::EtcdStore) {
    let mut tick = tokio::time::interval(ETCD_COMPACT_EVERY);
    tick.tick().await;
    let mut previous: Option<store::Revision> = None;
    loop {
        tick.tick().await;
        if let Some(rev) = previous {
            if let Err(e) = store.compact(rev).await {
                // Another server compacted past it already, or etcd is away: next time.
                tracing::debug!(revision = rev, error = %e, "etcd compaction");
            }
        }
        previous = store.revision().await.ok();
    }
}

/// How long the server waits for etcd to answer at start.
const ETCD_START_WAIT: Duration = Duration::from_secs(60);

pub async fn open_store(config: &ServerConfig) -> Result<(Arc<dyn Store>, String), ServerError> {
    if config.etcd_servers.is_empty() {
        let path = config.root.join("state.redb");
        let s = store::embedded::EmbeddedStore::open(&path)?;
        Ok((Arc::new(s), format!("embedded ({})", path.display())))
    } else {
        // As kube-apiserver does, wait for etcd to come up (a cluster starting with the
        // server, a leader being elected) rather than fail at once.
        let deadline = tokio::time::Instant::now() + ETCD_START_WAIT;
        let mut said = false;
        let s = loop {
            match store::etcd::EtcdStore::connect(&config.etcd_servers).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    if !said {
                        tracing::info!("waiting up to {ETCD_START_WAIT:?} for etcd: {e}");
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        tokio::spawn(compact_etcd(s.clone()));
        Ok((
            Arc::new(s),
            format!("etcd ({})", config.etcd_servers.join(",")),
        ))
    }
}

/// Serves until `stop` completes, then ends watches and drains connections.
pub async fn run(config: ServerConfig, stop: impl Future<Output = ()>) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.root).map_err(io_err(&config.root))?;
    let advertise_ip = advertise(&config);
    let (store, store_desc) = open_store(&config).await?;
    // Bound first, so that port 0 (tests) is known before the kubeconfig is written.
    let addr = SocketAddr::new(config.bind_address, config.secure_port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Io {
            path: PathBuf::from(format!("--bind-address/--secure-port {addr}")),
            source,
        })?;
    let port = listener.local_addr().map_err(io_err(&config.root))?.port();
    let api_config = ApiConfig {
        service_cidr: config.service_cluster_ip_range,
        node_ports: config.service_node_port_range,
        advertise: SocketAddr::new(advertise_ip, port),
    };
    let mut names = pki::ServingNames::default();
    names.ips.push(advertise_ip);
    if !config.bind_address.is_unspecified() {
        names.ips.push(config.bind_address);
    }
    if let Some(ip) = api_config.kubernetes_service_ip() {
        names.ips.push(ip);
    }
    if let Ok(h) = nix::unistd::gethostname() {
        if let Some(h) = h.to_str() {
            names.dns.push(h.to_string());
        }
    }
    let pki_dir = config.root.join("pki");
    let pki =
        pki::Pki::load_or_create(&pki_dir, &names).map_err(|e| ServerError::Pki(e.to_string()))?;
    let tls = auth::server_tls_config(&pki).map_err(|e| ServerError::Pki(e.to_string()))?;

    let host = match advertise_ip {
        IpAddr::V6(a) => format!("[{a}]"),
        IpAddr::V4(a) => a.to_string(),
    };
    let url = format!("https://{host}:{port}");
    let admin_conf = config.root.join("admin.conf");
    let mut kubeconfigs = vec![admin_conf.clone()];
    kubeconfigs.extend(config.admin_kubeconfig_copy.clone());
    for path in &kubeconfigs {
        kubeconfig::write_admin(path, &url, &pki)
            .map_err(|e| ServerError::Pki(format!("{}: {e}", path.display())))?;
    }

    let kubelet_client =
        KubeletClient::new(&pki.kubelet_client_cert_pem, &pki.kubelet_client_key_pem)
            .map_err(|e| ServerError::Pki(e.to_string()))?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let api = Arc::new(
        Api::new(
            store,
            api_config,
            crate::registry::all(),
            shutdown_rx.clone(),
        )
        .with_kubelet_client(kubelet_client),
    );
    api.bootstrap()
        .await
        .map_err(|e| ServerError::Bootstrap(e.message))?;
    // Loading the OpenAPI documents and bootstrapping leave freed heap behind in the
    // allocator's arenas: hand it back, so an idle server holds only what it uses.
    trim_heap();
    // And again now and then, so a burst of requests does not leave the idle server
    // holding its peak.
    let trimmer = tokio::spawn(async {
        let mut tick = tokio::time::interval(HEAP_TRIM_EVERY);
        loop {
            tick.tick().await;
            trim_heap();
        }
    });
    let pki = Arc::new(pki);
    let controllers = tokio::spawn(crate::controllers::namespace::run(api.clone()));
    let signer = tokio::spawn(crate::controllers::csr::run(api.clone(), pki.clone()));
    let token_cleaner = tokio::spawn(crate::controllers::tokencleaner::run(api.clone()));
    let mut managers = Vec::new();
    if config.controllers {
        use crate::api::auth::{CONTROLLER_MANAGER_USER, SCHEDULER_USER};
        use crate::controllers::{client::in_process, manager};
        let identity = manager::identity();
        managers.push(tokio::spawn(manager::run_controller_manager(
            in_process(api.clone(), CONTROLLER_MANAGER_USER),
            identity.clone(),
            Default::default(),
            config.node_cidrs.clone(),
        )));
        managers.push(tokio::spawn(manager::run_scheduler(
            in_process(api.clone(), SCHEDULER_USER),
            identity,
            Default::default(),
        )));
    }

    info!(
        "podrun server: serving {url} (listening on {}), store {store_desc}, kubeconfig {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        kubeconfigs.last().unwrap_or(&admin_conf).display()
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept");
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let acceptor = acceptor.clone();
        let api = api.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(auth::user_from_client_cert);
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let api = api.clone();
                let cert_user = user.clone();
                async move {
                    let response =
                        match auth::authenticate(&api, cert_user.as_ref(), req.headers()).await {
                            Ok(user) => api.handle(req, user).await,
                            Err(e) => crate::api::codec::error_response(&e),
                        };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "connection");
            }
        });
    }
    info!("podrun server: stopping");
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after 10 s; closing them");
    }
    controllers.abort();
    trimmer.abort();
    signer.abort();
    token_cleaner.abort();
    for m in managers {
        m.abort();
    }
    Ok(())
}
