//! `counter`: the smallest useful handler, used in the docs.

use opengrid_actors::{HandlerError, SessionContext, SessionHandler};
use opengrid_session::SessionId;

/// Adds each input to a running total and answers the total.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counter;

impl SessionHandler for Counter {
    type State = i64;
    type Input = i64;
    type Output = i64;

    fn id(&self) -> &str {
        "counter"
    }

    fn init(&self, _session: &SessionId) -> i64 {
        0
    }

    async fn handle(
        &self,
        total: &mut i64,
        add: i64,
        _ctx: &SessionContext,
    ) -> Result<i64, HandlerError> {
        *total = total.checked_add(add).ok_or_else(|| {
            HandlerError::new("overflow", format!("{total} + {add} overflows i64"))
        })?;
        Ok(*total)
    }
}
