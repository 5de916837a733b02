//! The stop signal: one value every long-running task (the relay's sessions, the backfill,
//! replay) watches, so that a SIGTERM reaches each of them the same way. It lives here, below
//! them all, so none of them has to import another to name it.

use tokio::sync::watch;

/// Resolves when walbox is asked to stop.
pub(crate) type Shutdown = watch::Receiver<bool>;
