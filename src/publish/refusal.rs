//! Why a declare did not happen, whichever AMQP client asked: the broker's refusal (its reply
//! code and text, for an error that says what exists and what to change) or another failure.

use crate::error::Error;

/// Why a declare did not happen.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The broker refused it (it closed the channel with this reply).
    Refused { code: u16, text: String },
    /// Anything else (a lost connection), already described.
    Failed(Error),
}

impl Refusal {
    /// The error to report for a declare described by `context`: a refusal is definite (the
    /// broker will refuse it again until someone changes the broker or walbox's flags).
    pub(crate) fn into_error(self, context: &str) -> Error {
        match self {
            Refusal::Refused { code, text } => Error::definite(format!(
                "{context}: the broker refused it ({code}: {text}); check the flags that name it \
                 and the user's permissions"
            )),
            Refusal::Failed(error) => error,
        }
    }
}
