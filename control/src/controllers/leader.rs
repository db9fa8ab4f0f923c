//! Lease-based leader election, as client-go's leaderelection does it: one holder per
//! Lease (kube-system/<name>), renewed every retry period; another candidate takes the
//! Lease over only once it has gone unrenewed for the lease duration. A leader that
//! cannot renew within the renew deadline stops its work before anyone else may start.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use tracing::{info, warn};

/// kube-controller-manager's defaults.
#[derive(Clone, Debug)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Runs `work` while this candidate (`identity`) holds the Lease kube-system/`name`;
/// when leadership is lost the work is dropped and the candidate goes back to waiting.
/// Never returns.
pub async fn run<F, Fut>(client: kube::Client, name: &str, identity: &str, timing: Timing, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, "kube-system");
    loop {
        // Wait to acquire.
        loop {
            match try_acquire_or_renew(&leases, name, identity, &timing).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => warn!(lease = name, error = %e, "leader election"),
            }
            tokio::time::sleep(timing.retry_period).await;
        }
        info!(lease = name, identity, "became leader");
        // Aborted on drop too: when this election itself is cancelled, the work ends.
        let task = AbortOnDrop(tokio::spawn(work()));
        // Renew until it fails for longer than the renew deadline.
        let mut last_renew = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(timing.retry_period).await;
            match try_acquire_or_renew(&leases, name, identity, &timing).await {
                Ok(true) => last_renew = tokio::time::Instant::now(),
                Ok(false) => break,
                Err(e) => {
                    warn!(lease = name, error = %e, "renewing the lease");
                    if last_renew.elapsed() >= timing.renew_deadline {
                        break;
                    }
                }
            }
        }
        drop(task);
        warn!(lease = name, identity, "lost leadership");
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One round: true when `identity` holds the Lease afterwards.
async fn try_acquire_or_renew(
    leases: &kube::Api<Lease>,
    name: &str,
    identity: &str,
    timing: &Timing,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let seconds = timing.lease_duration.as_secs() as i32;
    let Some(mut lease) = leases.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_string()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Someone else created it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if !holder.is_empty() && holder != identity {
        let duration = spec.lease_duration_seconds.unwrap_or(seconds).max(1) as i64;
        let renewed = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let expired = Timestamp::now().as_second() >= renewed.as_second() + duration;
        if !expired {
            return Ok(false);
        }
    }
    if holder != identity {
        spec.holder_identity = Some(identity.to_string());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now);
    // The update carries the resourceVersion read above: a concurrent writer wins and
    // this round loses with a Conflict.
    match leases.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::controllers::client::in_process;

    fn fast() -> Timing {
        Timing {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn one_candidate_leads_and_another_takes_over_when_it_stops() {
        let (api, _stop) = crate::api::auth::token::memory_api().await;
        let client = in_process(api, crate::api::auth::CONTROLLER_MANAGER_USER);
        let running = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let candidate = |id: &'static str| {
            let client = client.clone();
            let running = running.clone();
            let started = started.clone();
            tokio::spawn(async move {
                run(client, "test-lease", id, fast(), move || {
                    let running = running.clone();
                    let started = started.clone();
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        running.fetch_add(1, Ordering::SeqCst);
                        // Decrements when dropped (leadership lost or task aborted).
                        let _guard = Guard(running);
                        std::future::pending::<()>().await
                    }
                })
                .await
            })
        };
        let a = candidate("a");
        let b = candidate("b");
        wait(|| started.load(Ordering::SeqCst) == 1).await;
        // Never two at once, across several retry periods.
        for _ in 0..10 {
            assert!(running.load(Ordering::SeqCst) <= 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), "kube-system");
        let holder = leases
            .get("test-lease")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity;
        let (leader, other) = if holder.as_deref() == Some("a") {
            (a, "b")
        } else {
            (b, "a")
        };
        leader.abort();
        let _ = leader.await;
        // The leader's work ends with it, and the other takes over once the lease expires.
        wait(|| running.load(Ordering::SeqCst) == 0).await;
        wait(|| started.load(Ordering::SeqCst) == 2).await;
        assert_eq!(running.load(Ordering::SeqCst), 1);
        let lease = leases.get("test-lease").await.unwrap().spec.unwrap();
        assert_eq!(lease.holder_identity.as_deref(), Some(other));
        assert_eq!(lease.lease_transitions, Some(1));
    }

    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn wait(f: impl Fn() -> bool) {
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(tokio::time::Instant::now() < end, "timed out");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
