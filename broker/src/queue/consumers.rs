//! A queue's consumers and which one gets the next messages (protocol.md §9.1).
//!
//! Three rules, cheapest first: plain round-robin among consumers with credit (what a queue
//! without consumer priorities and without single-active-consumer does, at the cost of one
//! branch more than a bare loop); consumer priorities (RabbitMQ's `x-priority`: the highest
//! priority among consumers with credit is served, round-robin within it); and single active
//! consumer (one consumer receives, the others wait as standbys).

/// What the selection needs to know of a consumer.
pub(super) trait Member {
    /// Deliveries it takes now (0: none, e.g. its prefetch window is full).
    fn credit(&self) -> u32;
    /// Its priority; higher first.
    fn priority(&self) -> i32;
    /// Deliveries it holds unsettled.
    fn unacked(&self) -> u32;
}

/// The consumers of one queue, in registration order.
#[derive(Debug)]
pub(super) struct Consumers<C> {
    list: Vec<C>,
    /// Where the next round-robin search starts.
    next: usize,
    /// The queue's `single_active_consumer` argument.
    single_active: bool,
    /// Index of the active consumer (meaningful with `single_active` and a non-empty list).
    active: usize,
    /// Not all consumers share one priority: the slower, priority-aware search is needed.
    prioritised: bool,
    /// A higher-priority standby became active in [`Self::pick`] (listings are stale).
    switched: bool,
}

impl<C: Member> Consumers<C> {
    pub(super) fn new(single_active: bool) -> Self {
        Self {
            list: Vec::new(),
            next: 0,
            single_active,
            active: 0,
            prioritised: false,
            switched: false,
        }
    }

    /// Whether the active consumer changed in [`Self::pick`] since the last call.
    pub(super) fn take_switched(&mut self) -> bool {
        std::mem::take(&mut self.switched)
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn get(&self, idx: usize) -> &C {
        &self.list[idx]
    }

    pub(super) fn get_mut(&mut self, idx: usize) -> &mut C {
        &mut self.list[idx]
    }

    pub(super) fn find_mut(&mut self, pred: impl Fn(&C) -> bool) -> Option<&mut C> {
        self.list.iter_mut().find(|c| pred(c))
    }

    pub(super) fn position(&self, pred: impl Fn(&C) -> bool) -> Option<usize> {
        self.list.iter().position(pred)
    }

    pub(super) fn any(&self, pred: impl Fn(&C) -> bool) -> bool {
        self.list.iter().any(pred)
    }

    /// The consumers in registration order, each with whether it receives (false: a standby).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&C, bool)> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, c)| (c, !self.single_active || i == self.active))
    }

    /// Registers a consumer last. With single-active-consumer it becomes active only if it is
    /// the first; a higher-priority one takes over later (see [`Self::pick`]).
    pub(super) fn push(&mut self, consumer: C) {
        self.list.push(consumer);
        self.note_priorities();
    }

    /// Removes the consumers `pred` matches and returns them. When the active one goes, the
    /// best standby (highest priority, earliest registered) becomes active at once.
    pub(super) fn remove_where(&mut self, pred: impl Fn(&C) -> bool) -> Vec<C> {
        let active_goes = self.list.get(self.active).is_some_and(&pred);
        let before_active = self.list[..self.active.min(self.list.len())]
            .iter()
            .filter(|c| pred(c))
            .count();
        let (gone, kept): (Vec<C>, Vec<C>) = self.list.drain(..).partition(|c| pred(c));
        self.list = kept;
        self.active = if active_goes {
            self.best()
        } else {
            self.active - before_active
        };
        self.note_priorities();
        gone
    }

    /// Removes every consumer.
    pub(super) fn drain(&mut self) -> Vec<C> {
        self.active = 0;
        self.prioritised = false;
        std::mem::take(&mut self.list)
    }

    /// The consumer that gets the next messages, if one has credit.
    pub(super) fn pick(&mut self) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        if self.single_active {
            return self.pick_active();
        }
        if !self.prioritised {
            return self.round_robin(|_| true);
        }
        let top = self
            .list
            .iter()
            .filter(|c| c.credit() > 0)
            .map(Member::priority)
            .max()?;
        self.round_robin(|c| c.priority() == top)
    }

    /// The next consumer from the cursor with credit that `eligible` admits.
    fn round_robin(&mut self, eligible: impl Fn(&C) -> bool) -> Option<usize> {
        let n = self.list.len();
        let idx = (0..n)
            .map(|i| (self.next + i) % n)
            .find(|&i| eligible(&self.list[i]) && self.list[i].credit() > 0)?;
        self.next = (idx + 1) % n;
        Some(idx)
    }

    /// Single active consumer: only the active one receives. A standby of higher priority
    /// takes over as RabbitMQ 3.12 does: the active one gets nothing more, and once it holds
    /// no unsettled delivery the higher one becomes active.
    fn pick_active(&mut self) -> Option<usize> {
        if self.prioritised {
            let best = self.best();
            if self.list[best].priority() > self.list[self.active].priority() {
                if self.list[self.active].unacked() > 0 {
                    return None;
                }
                self.active = best;
                self.switched = true;
            }
        }
        (self.list[self.active].credit() > 0).then_some(self.active)
    }

    /// Index of the highest-priority consumer, the earliest registered among equals (0 when
    /// there is none).
    fn best(&self) -> usize {
        let mut best = 0;
        for (i, c) in self.list.iter().enumerate() {
            if c.priority() > self.list[best].priority() {
                best = i;
            }
        }
        best
    }

    fn note_priorities(&mut self) {
        self.prioritised = self
            .list
            .first()
            .is_some_and(|first| self.list.iter().any(|c| c.priority() != first.priority()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Fake {
        id: u32,
        credit: u32,
        priority: i32,
        unacked: u32,
    }

    impl Member for Fake {
        fn credit(&self) -> u32 {
            self.credit
        }
        fn priority(&self) -> i32 {
            self.priority
        }
        fn unacked(&self) -> u32 {
            self.unacked
        }
    }

    fn fake(id: u32, priority: i32) -> Fake {
        Fake {
            id,
            credit: 1,
            priority,
            unacked: 0,
        }
    }

    fn consumers(single_active: bool, members: &[Fake]) -> Consumers<Fake> {
        let mut c = Consumers::new(single_active);
        members.iter().for_each(|&m| c.push(m));
        c
    }

    fn picked_ids(c: &mut Consumers<Fake>, rounds: usize) -> Vec<u32> {
        (0..rounds)
            .map_while(|_| c.pick().map(|i| c.get(i).id))
            .collect()
    }

    fn active_ids(c: &Consumers<Fake>) -> Vec<u32> {
        c.iter().filter(|(_, a)| *a).map(|(c, _)| c.id).collect()
    }

    #[test]
    fn equal_consumers_take_turns_and_one_without_credit_is_skipped() {
        let mut c = consumers(false, &[fake(1, 0), fake(2, 0), fake(3, 0)]);
        assert_eq!(picked_ids(&mut c, 4), [1, 2, 3, 1]);
        c.get_mut(1).credit = 0;
        assert_eq!(picked_ids(&mut c, 3), [3, 1, 3]);
        assert_eq!(active_ids(&c), [1, 2, 3]);
    }

    #[test]
    fn nobody_is_picked_when_no_consumer_has_credit() {
        let mut c = consumers(false, &[fake(1, 0)]);
        c.get_mut(0).credit = 0;
        assert_eq!(c.pick(), None);
        assert_eq!(consumers(false, &[]).pick(), None);
    }

    #[test]
    fn the_highest_priority_with_credit_is_served_first_round_robin_within_it() {
        let mut c = consumers(false, &[fake(1, 0), fake(2, 5), fake(3, 5), fake(4, -1)]);
        assert_eq!(picked_ids(&mut c, 4), [2, 3, 2, 3]);
        // Both high ones full: the next level down.
        c.get_mut(1).credit = 0;
        c.get_mut(2).credit = 0;
        assert_eq!(picked_ids(&mut c, 2), [1, 1]);
        c.get_mut(0).credit = 0;
        assert_eq!(picked_ids(&mut c, 1), [4]);
        // Credit back at the top: served before the lower ones again.
        c.get_mut(2).credit = 1;
        assert_eq!(picked_ids(&mut c, 2), [3, 3]);
    }

    #[test]
    fn only_the_first_registered_consumer_is_active_and_standbys_take_over_in_order() {
        let mut c = consumers(true, &[fake(1, 0), fake(2, 0), fake(3, 0)]);
        assert_eq!(picked_ids(&mut c, 3), [1, 1, 1]);
        assert_eq!(active_ids(&c), [1]);
        c.remove_where(|f| f.id == 1);
        assert_eq!(active_ids(&c), [2]);
        assert_eq!(picked_ids(&mut c, 2), [2, 2]);
        c.remove_where(|f| f.id == 2);
        assert_eq!(picked_ids(&mut c, 1), [3]);
    }

    #[test]
    fn a_standby_leaving_keeps_the_active_one() {
        let mut c = consumers(true, &[fake(1, 0), fake(2, 0), fake(3, 0)]);
        c.remove_where(|f| f.id == 2);
        assert_eq!(active_ids(&c), [1]);
        c.push(fake(4, 0));
        c.remove_where(|f| f.id == 1);
        assert_eq!(active_ids(&c), [3]);
        // The active one without credit: nobody else is served meanwhile.
        c.get_mut(0).credit = 0;
        assert_eq!(c.pick(), None);
    }

    #[test]
    fn an_active_consumer_behind_a_standby_goes_with_others() {
        let mut c = consumers(true, &[fake(1, 0), fake(2, 0), fake(3, 0), fake(4, 0)]);
        c.remove_where(|f| f.id == 1);
        assert_eq!(active_ids(&c), [2]);
        // One call removes a standby before and after the active one (a closed connection).
        c.remove_where(|f| f.id == 2 || f.id == 4);
        assert_eq!(active_ids(&c), [3]);
        let gone = c.remove_where(|f| f.id == 3);
        assert_eq!(gone.len(), 1);
        assert!(c.is_empty());
        assert_eq!(c.pick(), None);
    }

    #[test]
    fn with_single_active_a_higher_priority_standby_takes_over_once_the_active_is_settled() {
        let mut c = consumers(true, &[fake(1, 0), fake(2, 0)]);
        c.get_mut(0).unacked = 2;
        c.push(fake(3, 7));
        // The active one holds deliveries: it gets nothing more, nor does anyone else.
        assert_eq!(c.pick(), None);
        assert_eq!(active_ids(&c), [1]);
        assert!(!c.take_switched());
        c.get_mut(0).unacked = 0;
        assert_eq!(picked_ids(&mut c, 2), [3, 3]);
        assert_eq!(active_ids(&c), [3]);
        assert!(c.take_switched(), "the listing is refreshed");
        // It goes: the best standby is the earliest of the highest priority left.
        c.remove_where(|f| f.id == 3);
        assert_eq!(active_ids(&c), [1]);
    }

    #[test]
    fn with_single_active_the_highest_priority_takes_over_when_the_active_goes() {
        let mut c = consumers(true, &[fake(1, 0), fake(2, 1), fake(3, 4), fake(4, 4)]);
        // Consumer 1 registered first but 3 outranks it and 1 holds nothing: 3 at once.
        assert_eq!(picked_ids(&mut c, 1), [3]);
        c.remove_where(|f| f.id == 3);
        assert_eq!(active_ids(&c), [4]);
        c.remove_where(|f| f.id == 4);
        assert_eq!(active_ids(&c), [2]);
    }
}
