//! A bounded set of recently seen keys (oldest forgotten first).

use std::collections::{HashSet, VecDeque};

/// Remembers up to `capacity` keys.
#[derive(Debug)]
pub struct RecentSet {
    capacity: usize,
    order: VecDeque<String>,
    keys: HashSet<String>,
}

impl RecentSet {
    /// An empty set.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            keys: HashSet::new(),
        }
    }

    /// Whether `key` was inserted and not yet forgotten.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Forgets `key` (a claim given back).
    pub fn remove(&mut self, key: &str) {
        if self.keys.remove(key) {
            self.order.retain(|k| k != key);
        }
    }

    /// Inserts `key`, forgetting the oldest key when full.
    pub fn insert(&mut self, key: &str) {
        if self.keys.insert(key.to_owned()) {
            self.order.push_back(key.to_owned());
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.keys.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_when_full() {
        let mut s = RecentSet::new(2);
        s.insert("a");
        s.insert("b");
        s.insert("a");
        s.insert("c");
        assert!(!s.contains("a") && s.contains("b") && s.contains("c"));
    }
}
