//! A bounded buffer of numbered log lines: the worker keeps one for its own log, the controller
//! one per worker for the lines workers ship. Lines are numbered from 0 over the writer's
//! lifetime; when the buffer is full the oldest lines go, but the numbering never restarts, so
//! "lines 120..140" means the same lines to everyone.

use crate::protocol::{ConsoleLine, ConsoleLines};
use std::collections::VecDeque;

/// Numbered lines, at most `capacity` of them kept.
#[derive(Debug, Clone)]
pub struct ConsoleRing {
    lines: VecDeque<ConsoleLine>,
    capacity: usize,
    total: u64,
}

impl ConsoleRing {
    /// An empty ring keeping at most `capacity` lines (at least 1).
    pub fn new(capacity: usize) -> ConsoleRing {
        ConsoleRing {
            lines: VecDeque::new(),
            capacity: capacity.max(1),
            total: 0,
        }
    }

    /// Appends a line, numbering it; returns its number.
    pub fn push(&mut self, text: String) -> u64 {
        let n = self.total;
        self.insert(ConsoleLine { n, text });
        n
    }

    /// Appends lines numbered elsewhere (shipped by a worker). Lines at or below the last kept
    /// number are duplicates of a retried shipment and are ignored; a gap (lines the writer
    /// dropped before shipping) is kept as a gap.
    pub fn extend_numbered(&mut self, lines: impl IntoIterator<Item = ConsoleLine>) {
        for line in lines {
            if line.n >= self.total {
                self.insert(line);
            }
        }
    }

    fn insert(&mut self, line: ConsoleLine) {
        self.total = line.n.saturating_add(1);
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// Lines written in all, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Number of the oldest line kept (= `total` when empty).
    pub fn first_kept(&self) -> u64 {
        self.lines.front().map_or(self.total, |l| l.n)
    }

    /// Kept lines numbered `start..end` (absolute numbers, clamped to what is kept).
    pub fn range(&self, start: u64, end: u64) -> ConsoleLines {
        let lines = self
            .lines
            .iter()
            .filter(|l| l.n >= start && l.n < end)
            .cloned()
            .collect();
        self.wrap(lines)
    }

    /// All kept lines.
    pub fn all(&self) -> ConsoleLines {
        self.wrap(self.lines.iter().cloned().collect())
    }

    /// The first `n` kept lines.
    pub fn first(&self, n: usize) -> ConsoleLines {
        self.wrap(self.lines.iter().take(n).cloned().collect())
    }

    /// The last `n` kept lines.
    pub fn last(&self, n: usize) -> ConsoleLines {
        let skip = self.lines.len().saturating_sub(n);
        self.wrap(self.lines.iter().skip(skip).cloned().collect())
    }

    /// Kept lines numbered `from` or later, at most `max` of them (for shipping new lines).
    pub fn since(&self, from: u64, max: usize) -> Vec<ConsoleLine> {
        let skip = self.lines.partition_point(|l| l.n < from);
        self.lines.iter().skip(skip).take(max).cloned().collect()
    }

    fn wrap(&self, lines: Vec<ConsoleLine>) -> ConsoleLines {
        ConsoleLines {
            total: self.total,
            first_kept: self.first_kept(),
            lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(c: &ConsoleLines) -> Vec<u64> {
        c.lines.iter().map(|l| l.n).collect()
    }

    #[test]
    fn numbering_survives_dropping_old_lines() {
        let mut r = ConsoleRing::new(3);
        for i in 0..5 {
            assert_eq!(r.push(format!("line {i}")), i);
        }
        assert_eq!(r.total(), 5);
        assert_eq!(r.first_kept(), 2);
        assert_eq!(texts(&r.all()), [2, 3, 4]);
        assert_eq!(texts(&r.first(2)), [2, 3]);
        assert_eq!(texts(&r.last(2)), [3, 4]);
        assert_eq!(texts(&r.range(0, 4)), [2, 3]);
        assert_eq!(r.since(3, 10).len(), 2);
        assert_eq!(r.since(0, 1)[0].n, 2);
    }

    #[test]
    fn shipped_lines_are_deduplicated_and_gaps_kept() {
        let mut r = ConsoleRing::new(10);
        let l = |n: u64| ConsoleLine {
            n,
            text: format!("{n}"),
        };
        r.extend_numbered([l(0), l(1)]);
        r.extend_numbered([l(1), l(2), l(5)]);
        assert_eq!(texts(&r.all()), [0, 1, 2, 5]);
        assert_eq!(r.total(), 6);
    }
}
