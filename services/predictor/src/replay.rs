//! Idempotent replays of caller-chosen inference ids.
//!
//! A client that retries a request (its first attempt timed out, say) with the same inference
//! ids must get the answer that was logged for them, not a new one that nobody logged. The
//! index remembers recent answers to caller-chosen ids; older ones are read back from this
//! service's own copy of the log in Postgres ([`crate::store`]). An id that is being scored
//! right now is *claimed*: a second request for it waits for the first and answers the same.
//!
//! Generated ids never enter the index: nobody can send them before they are answered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The answer logged for one inference id.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub class: String,
    pub probabilities: BTreeMap<String, f32>,
    pub confidence: f32,
    pub model_name: String,
    pub model_version: i32,
}

enum Entry {
    /// Claimed by a request that is scoring and logging it; waiters watch for the answer.
    InFlight(watch::Receiver<Option<Arc<Answer>>>),
    Logged(Arc<Answer>),
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Logged ids, oldest first, for eviction.
    order: VecDeque<String>,
}

/// The index; cheap to clone.
#[derive(Clone)]
pub struct Replay {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// What the index knows of an id.
pub enum Claim {
    /// Nobody has it: the caller now owns it and must [`Ticket::complete`] it (dropping the
    /// ticket gives it up, for a request that failed).
    Fresh(Ticket),
    /// It was answered and logged already.
    Logged(Arc<Answer>),
}

/// Ownership of an id being scored.
pub struct Ticket {
    replay: Replay,
    id: String,
    tx: Option<watch::Sender<Option<Arc<Answer>>>>,
}

impl Replay {
    /// Remembers up to `capacity` logged answers (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Claims `id`, waiting while another request holds it. Callers that claim several ids
    /// must claim them in one global order (sorted), so two requests never wait on each other.
    pub async fn claim(&self, id: &str) -> Claim {
        loop {
            let mut rx = {
                let mut inner = self.inner.lock().expect("replay index lock");
                match inner.entries.get(id) {
                    Some(Entry::Logged(answer)) => return Claim::Logged(answer.clone()),
                    Some(Entry::InFlight(rx)) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        inner.entries.insert(id.to_owned(), Entry::InFlight(rx));
                        return Claim::Fresh(Ticket {
                            replay: self.clone(),
                            id: id.to_owned(),
                            tx: Some(tx),
                        });
                    }
                }
            };
            // Wait for the holder: an answer, or its ticket dropped (then claim again).
            if let Ok(answer) = rx.wait_for(Option::is_some).await
                && let Some(answer) = answer.clone()
            {
                return Claim::Logged(answer);
            }
        }
    }

    fn settle(&self, id: &str, answer: Option<Arc<Answer>>) {
        let mut inner = self.inner.lock().expect("replay index lock");
        match answer {
            Some(answer) => {
                inner.entries.insert(id.to_owned(), Entry::Logged(answer));
                inner.order.push_back(id.to_owned());
                while inner.order.len() > self.capacity {
                    if let Some(old) = inner.order.pop_front() {
                        inner.entries.remove(&old);
                    }
                }
            }
            None => {
                if matches!(inner.entries.get(id), Some(Entry::InFlight(_))) {
                    inner.entries.remove(id);
                }
            }
        }
    }

    /// Logged answers held (for tests and metrics).
    pub fn remembered(&self) -> usize {
        self.inner.lock().expect("replay index lock").order.len()
    }
}

impl Ticket {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Records the logged answer and wakes every request waiting for this id.
    pub fn complete(mut self, answer: Arc<Answer>) {
        self.replay.settle(&self.id, Some(answer.clone()));
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(answer));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // Given up: the next claimant scores it afresh.
            self.replay.settle(&self.id, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answer(class: &str) -> Arc<Answer> {
        Arc::new(Answer {
            class: class.to_owned(),
            probabilities: BTreeMap::from([(class.to_owned(), 1.0)]),
            confidence: 1.0,
            model_name: "m".to_owned(),
            model_version: 1,
        })
    }

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_and_gets_its_answer() {
        let replay = Replay::new(10);
        let Claim::Fresh(ticket) = replay.claim("a").await else {
            panic!("a new id is fresh")
        };
        let r = replay.clone();
        let waiter = tokio::spawn(async move {
            match r.claim("a").await {
                Claim::Logged(a) => a.class.clone(),
                Claim::Fresh(_) => "fresh".to_owned(),
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the second claim must wait");
        ticket.complete(answer("x"));
        assert_eq!(waiter.await.unwrap(), "x");
        assert!(matches!(replay.claim("a").await, Claim::Logged(a) if a.class == "x"));
    }

    #[tokio::test]
    async fn a_dropped_ticket_lets_the_next_claim_score_afresh() {
        let replay = Replay::new(10);
        let Claim::Fresh(ticket) = replay.claim("a").await else {
            panic!()
        };
        let r = replay.clone();
        let waiter = tokio::spawn(async move { matches!(r.claim("a").await, Claim::Fresh(_)) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(ticket);
        assert!(
            waiter.await.unwrap(),
            "after a failure the id is free again"
        );
    }

    #[tokio::test]
    async fn only_the_newest_answers_are_kept() {
        let replay = Replay::new(2);
        for id in ["a", "b", "c"] {
            let Claim::Fresh(t) = replay.claim(id).await else {
                panic!()
            };
            t.complete(answer(id));
        }
        assert_eq!(replay.remembered(), 2);
        assert!(matches!(replay.claim("a").await, Claim::Fresh(_)));
        assert!(matches!(replay.claim("c").await, Claim::Logged(_)));
    }
}
