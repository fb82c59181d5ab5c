//! Lease round trip: AcquireLease + ReleaseLease through the real scheduler (fake agent that
//! answers at once, fake authenticator) beside a ListNodes call (the gRPC floor) and a munge
//! credential's cost (`munge -u 0 -s <payload>` here plus `unmunge` in the scheduler), all in one run.
//!
//! `cargo bench -p harvest-scheduler --bench acquire [-- ROUNDS]` (default 300 rounds).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Answer, FakeAgent, Scheduler, config, request, view};
use harvest_client::identity::{CredentialSource, Munge};
use harvest_scheduler::identity::{Authenticator, Unmunge};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let s = Scheduler::start(config(), "127.0.0.1:0").await;
        let agent = FakeAgent::connect(s.addr, "n1", 60_000, vec![], Answer::Ready).await;
        agent.report(1, &view("n1", 4, 0)).await;
        let mut c = s.client(1000).await;
        while c.nodes().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (mut list, mut lease) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            c.nodes().await.unwrap();
            list.push(t.elapsed());
            let t = Instant::now();
            let l = c.acquire(&request(1, 10)).await.unwrap();
            c.release(&l.id).await.unwrap();
            lease.push(t.elapsed());
        }
        let munge = Munge::default();
        let unmunge = Unmunge::new("unmunge".into(), None, Duration::from_secs(5), 16);
        let mut cred = Vec::new();
        let credential_rounds = rounds.min(100);
        for _ in 0..credential_rounds {
            let t = Instant::now();
            match munge.credential("harvest-v1 ListNodes 0123456789abcdef") {
                Ok(m) => {
                    if unmunge.authenticate(&m).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
            cred.push(t.elapsed());
        }
        let (l, a) = (median(list), median(lease));
        println!("rounds: {rounds}");
        println!("ListNodes (gRPC floor)            median {l:>10.1?}");
        println!(
            "AcquireLease + ReleaseLease       median {a:>10.1?}  ({:.1}x ListNodes)",
            a.as_secs_f64() / l.as_secs_f64()
        );
        if cred.len() == credential_rounds {
            println!(
                "munge -s + unmunge (per request)  median {:>10.1?}  (not in the figures above: fake authenticator)",
                median(cred)
            );
        } else {
            println!("munge + unmunge: unavailable here (is munged running?)");
        }
        s.stop().await;
    });
}
