//! The zone's source: reflectors over every Service and EndpointSlice, and a loop that
//! rebuilds the [`Zone`] after each change and publishes it on a watch channel.
//!
//! Changes that arrive while a rebuild runs are coalesced into the next one, so a burst
//! of updates costs a few rebuilds, not one per event.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use super::zone::Zone;

/// Keep `zone` current until `shutdown` turns true. The zone stays unsynced (SERVFAIL
/// for cluster names) until both resources have been listed once.
pub async fn run(
    client: Client,
    domain: String,
    ttl: u32,
    zone: watch::Sender<Arc<Zone>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let changed = Arc::new(Notify::new());
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let reflect_services = reflect(Api::all(client.clone()), services_writer, changed.clone());
    let reflect_slices = reflect(Api::all(client), slices_writer, changed.clone());
    let rebuild = async {
        let _ = futures_util::future::join(services.wait_until_ready(), slices.wait_until_ready())
            .await;
        let mut serial: u32 = 1;
        loop {
            // Take the notification first: a change during the build triggers another.
            let next = changed.notified();
            let built = build(&domain, ttl, serial, &services, &slices);
            tracing::debug!(names = built.len(), serial, "cluster dns zone rebuilt");
            zone.send_replace(Arc::new(built));
            serial = serial.wrapping_add(1).max(1);
            next.await;
        }
    };
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => {}
        _ = reflect_services => {}
        _ = reflect_slices => {}
        _ = rebuild => {}
    }
}

fn build(
    domain: &str,
    ttl: u32,
    serial: u32,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
) -> Zone {
    let services = services.state();
    let slices = slices.state();
    Zone::build(
        domain,
        ttl,
        serial,
        services.iter().map(AsRef::as_ref),
        slices.iter().map(AsRef::as_ref),
    )
}

/// Run one reflector, waking `changed` at every event.
async fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>, changed: Arc<Notify>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).to_string();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::debug!(kind, error = %e, "cluster dns watch"),
        }
    }
}
