//! Lanes: the threads that answer requests. The server runs one lane per core, each a runtime of
//! its own with its own listening socket, its own connections to the speed view and its own
//! gatherer of reads, so that a request is read, decided and answered on the thread that accepted
//! it: a hand-over between tasks of one thread is a push on a queue, where one between threads
//! is a wake-up through the kernel. Whatever runs outside a lane (start-up, the refresh of
//! watermarks, Flight SQL, the command-line tools) is lane 0.
//!
//! What keeps something per lane reads [`current`] and keeps an array of [`MOST`] places; lanes
//! past [`MOST`] share places (`current() % MOST`).

use std::cell::Cell;

/// Places kept per lane, lane 0 included.
pub const MOST: usize = 64;

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// The lane of this thread, 0 outside the lanes.
pub fn current() -> usize {
    LANE.with(Cell::get)
}

/// [`current`] as an index into an array of [`MOST`] places.
pub fn place() -> usize {
    current() % MOST
}

/// Makes this thread lane `lane` (1 and up) until it ends.
pub fn enter(lane: usize) {
    assert!(lane > 0, "lane 0 is every thread outside the lanes");
    LANE.with(|current| current.set(lane));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_lane_0_until_it_enters_one_and_other_threads_keep_theirs() {
        assert_eq!(current(), 0);
        let entered = std::thread::spawn(|| {
            enter(MOST + 3);
            (current(), place())
        })
        .join()
        .unwrap();
        assert_eq!(entered, (MOST + 3, 3));
        assert_eq!(current(), 0, "entering a lane on one thread leaves the others alone");
    }
}
