//! What a call may ask of whoever made it: progress to report, a person to confirm an
//! action, an identity for the audit log. The server implements it over MCP; the
//! engine and plugins see only this interface.

use std::future::Future;
use std::pin::Pin;

/// A boxed future borrowed from the caller.
pub type CallerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The party on the other end of one call.
pub trait Caller: Send + Sync {
    /// Reports progress; a no-op when the client did not ask for it.
    fn progress<'a>(
        &'a self,
        done: f64,
        total: Option<f64>,
        message: &'a str,
    ) -> CallerFuture<'a, ()>;

    /// Asks the person behind the client to confirm `message`: `Some(true)` confirmed,
    /// `Some(false)` declined or cancelled, `None` when the client cannot ask.
    fn confirm<'a>(&'a self, message: &'a str) -> CallerFuture<'a, Option<bool>>;

    /// Who is calling (an authenticated name), for the audit log; `None` when unknown.
    fn identity(&self) -> Option<String> {
        None
    }
}

/// A caller that takes no progress and has nobody to ask: the CLI, tests, resources.
pub struct NoCaller;

impl Caller for NoCaller {
    fn progress<'a>(&'a self, _: f64, _: Option<f64>, _: &'a str) -> CallerFuture<'a, ()> {
        Box::pin(async {})
    }

    fn confirm<'a>(&'a self, _: &'a str) -> CallerFuture<'a, Option<bool>> {
        Box::pin(async { None })
    }
}
