//! Which node of `--amqp-url` to connect to: the one used last first, then the others in
//! order, each given a bounded time, whichever AMQP client does the connecting.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::timeout;
use tracing::{info, warn};

use crate::config::{AmqpUrls, SecretUrl};
use crate::error::{Disposition, Error, Result};

/// How long one broker node of `--amqp-url` may take to accept a connection before walbox
/// tries the next (a node behind a dead network link would otherwise hold it for minutes).
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The position in `--amqp-url` of the node the last connection reached: the next connection
/// tries it first, so walbox stays on a healthy node and leaves one only when it fails.
static CURRENT_NODE: AtomicUsize = AtomicUsize::new(0);

/// Connect with `connect` to the first node of `urls` that answers, starting with the one
/// used last.
///
/// One node failing is transient (walbox tries the next, and the supervisor backs off once
/// all have failed); only when every node gives a definite answer (e.g. refused credentials)
/// is the failure definite.
pub(crate) async fn connect_any<'a, T, F, Fut>(urls: &'a AmqpUrls, mut connect: F) -> Result<T>
where
    F: FnMut(&'a SecretUrl) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let first = CURRENT_NODE.load(Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut all_definite = true;
    for offset in 0..urls.len() {
        let index = (first + offset) % urls.len();
        let url = urls.get(index);
        let error = match timeout(NODE_CONNECT_TIMEOUT, connect(url)).await {
            Ok(Ok(connected)) => {
                if index != first {
                    info!(node = %url, "connected to another broker node");
                }
                CURRENT_NODE.store(index, Ordering::Relaxed);
                return Ok(connected);
            }
            Ok(Err(error)) => error,
            Err(_) => Error::transient(format!(
                "connecting to {url}: no answer within {} s",
                NODE_CONNECT_TIMEOUT.as_secs()
            )),
        };
        if urls.len() > 1 {
            warn!(node = %url, %error, "broker node failed; trying the next");
        }
        all_definite &= error.disposition() == Disposition::Stop;
        failures.push(error);
    }
    if failures.len() == 1 || all_definite {
        return Err(failures.swap_remove(0));
    }
    let reasons: Vec<String> = failures.iter().map(ToString::to_string).collect();
    Err(Error::transient(format!(
        "no broker node answered: {}",
        reasons.join("; ")
    )))
}

/// The node connected to, for messages.
pub(crate) fn current(urls: &AmqpUrls) -> String {
    urls.get(CURRENT_NODE.load(Ordering::Relaxed)).to_string()
}
