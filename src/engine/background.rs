//! Work that runs beside the serving engine (a rebuild's engine, a background compaction),
//! kept out of the serving engine's way: on CPUs of its own, at the least priority, and
//! allocating from a memory arena of its own.

use std::sync::Mutex;

/// The threads of work that runs beside the serving engine (a rebuild's engine, a
/// compaction). Each calls [`Background::lower`], and all are restored at once when the work
/// ends or the engine takes over ([`Background::restore`]):
///
/// - **CPUs of their own.** The first call splits the process's CPUs: the last quarter (at
///   least one) for the background threads, the others for every other thread of the
///   process, including threads those start later. `SCHED_IDLE` alone was not enough:
///   measured on a 2-core VM at 1M events of state, a serving thread waking on a CPU that a
///   background thread held waited for it often enough to double the engine's p99 (a
///   `SCHED_IDLE` spinner on any CPU took it from ~1.0 to 2–6 ms; the same spinner on a CPU
///   the serving threads did not use left it at ~1.0 ms). A machine of one CPU is not split.
/// - **The least CPU priority** (Linux's `SCHED_IDLE`), for the CPUs that are still shared
///   (a split leaves none on 2 CPUs, but the threads of other processes remain). Leaving
///   `SCHED_IDLE` needs `CAP_SYS_NICE`, so [`Background::available`] says first whether it
///   can be undone: where it cannot, callers leave their threads as they are (a serving
///   engine must never be left at the lowest).
/// - **A jemalloc arena of their own** ([`own_arena`]): a thread at `SCHED_IDLE` holding an
///   arena's lock that a serving thread needs would keep the serving thread waiting for as
///   long as the machine is busy (a priority inversion).
#[derive(Debug, Default)]
pub struct Background {
    threads: Mutex<Vec<libc::pid_t>>,
    /// Whether it holds a share of the process's split ([`SPLIT`]).
    joined: Mutex<bool>,
}

/// The process's CPUs, split while any [`Background`] has lowered a thread: one split for
/// all of them, so that two at once (a compaction ending as a rebuild begins) do not undo
/// each other's.
static SPLIT: Mutex<Option<Split>> = Mutex::new(None);

#[derive(Debug)]
struct Split {
    /// The process's CPUs before the split.
    all: Vec<usize>,
    serving: Vec<usize>,
    background: Vec<usize>,
    /// The [`Background`]s holding it.
    users: usize,
}

impl Background {
    /// Whether threads may be lowered and restored here (checked once, on a thread of its
    /// own).
    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::thread::spawn(|| {
                set_policy(0, libc::SCHED_IDLE) && set_policy(0, libc::SCHED_OTHER)
            })
            .join()
            .unwrap_or(false)
        })
    }

    /// Lowers the calling thread, and remembers it for [`Background::restore`]; the first
    /// lowered thread of the process splits the CPUs (see [`Background`]).
    pub fn lower(&self) {
        self.lower_thread(this_thread(), true);
    }

    /// Gives the calling thread, lowered, its normal priority back while it stays on the
    /// background's CPUs: a thread that takes locks the serving threads wait for (a
    /// rebuild's comparison of the views) must not be kept from running while it holds
    /// them by the other background threads of its CPUs.
    pub fn lift(&self) {
        set_policy(0, libc::SCHED_OTHER);
    }

    /// Lowers thread `tid` of this process (with an arena of its own if it is the calling
    /// thread, `own`), and remembers it for [`Background::restore`].
    fn lower_thread(&self, tid: libc::pid_t, own: bool) {
        if let Ok(mut threads) = self.threads.lock() {
            threads.push(tid);
        }
        if let (Ok(mut joined), Ok(mut split)) = (self.joined.lock(), SPLIT.lock()) {
            if !*joined {
                match split.as_mut() {
                    Some(split) => split.users += 1,
                    None => *split = split_cpus(tid),
                }
                *joined = split.is_some();
            }
            if let Some(split) = split.as_ref() {
                set_cpus(tid, &split.background);
            }
        }
        if own {
            own_arena();
        }
        set_policy(tid, libc::SCHED_IDLE);
    }

    /// Gives every lowered thread its normal priority back. The last [`Background`] to
    /// restore gives every thread of the process the CPUs it had before the split; one
    /// restored before another moves its threads to the serving threads' CPUs.
    pub fn restore(&self) {
        let threads = self.threads.lock().map(|t| t.clone()).unwrap_or_default();
        for &tid in &threads {
            set_policy(tid, libc::SCHED_OTHER);
        }
        let (Ok(mut joined), Ok(mut split)) = (self.joined.lock(), SPLIT.lock()) else {
            return;
        };
        if !std::mem::take(&mut *joined) {
            return;
        }
        let Some(held) = split.as_mut() else {
            return;
        };
        held.users = held.users.saturating_sub(1);
        if held.users == 0 {
            for tid in process_threads() {
                set_cpus(tid, &held.all);
            }
            *split = None;
        } else {
            for tid in threads {
                set_cpus(tid, &held.serving);
            }
        }
    }
}

/// The threads of one engine, each registered as it starts ([`Crew::join`]), so that they
/// can be lowered together once the engine has handed its outputs over and has only its
/// state left to free (a rebuild's switch-over, [`super::switch`]): freeing a large
/// dataflow's arrangements takes its workers most of a second of CPU, which must not be
/// taken from the engine that now serves.
#[derive(Debug, Default)]
pub struct Crew {
    threads: Mutex<Vec<libc::pid_t>>,
    lowered: Background,
}

impl Crew {
    /// Registers the calling thread as one of the engine's.
    pub fn join(&self) {
        if let Ok(mut threads) = self.threads.lock() {
            threads.push(this_thread());
        }
    }

    /// Lowers every registered thread as background work (where that can be undone,
    /// [`Background::available`]).
    pub fn lower(&self) {
        if !Background::available() {
            return;
        }
        let threads = self.threads.lock().map(|t| t.clone()).unwrap_or_default();
        for tid in threads {
            self.lowered.lower_thread(tid, false);
        }
    }

    /// Ends what [`Crew::lower`] did, once the engine's threads have ended.
    pub fn restore(&self) {
        self.lowered.restore();
    }
}

/// The calling thread's id (as the scheduling calls take it).
fn this_thread() -> libc::pid_t {
    // SAFETY: gettid takes nothing and returns the calling thread's id
    unsafe { libc::gettid() }
}

/// Drops `value` on a thread of its own, lowered as background work: a large map's strings
/// take a while to free, and not on a serving thread.
pub fn drop_in_background<T: Send + 'static>(value: T) {
    let freeing = std::thread::Builder::new()
        .name("throughline-free".into())
        .spawn(move || {
            let background = Background::default();
            if Background::available() {
                background.lower();
            }
            drop(value);
            background.restore();
        });
    // a thread that cannot start dropped the value where it was
    drop(freeing);
}

/// Splits the process's CPUs between the background threads (the last quarter, at least
/// one) and every other thread but `lowered`, which it moves off the background's; `None`
/// where there is only one CPU, or the CPUs cannot be read.
fn split_cpus(lowered: libc::pid_t) -> Option<Split> {
    let all = cpus_of(0)?;
    if all.len() < 2 {
        return None;
    }
    let (serving, background) = all.split_at(serving_share(all.len()));
    for tid in process_threads() {
        if tid != lowered {
            set_cpus(tid, serving);
        }
    }
    Some(Split {
        serving: serving.to_vec(),
        background: background.to_vec(),
        all,
        users: 1,
    })
}

/// How many of `cpus` CPUs the serving threads keep while background work runs: all but the
/// last quarter (at least one), or all of one.
fn serving_share(cpus: usize) -> usize {
    match cpus {
        0 | 1 => cpus,
        _ => cpus - (cpus / 4).max(1),
    }
}

/// The CPUs the serving engine and every other thread keep while a rebuild or a compaction
/// runs beside them ([`Background`]); `None` when the process's CPUs cannot be read.
pub fn serving_cpus() -> Option<usize> {
    cpus_of(0).map(|all| serving_share(all.len()))
}

/// Has the calling thread allocate from the background threads' jemalloc arena, made at the
/// first call (see [`Background`]); whether it took. Where jemalloc is not the allocator
/// (the library in another program) this sets jemalloc's own, unused, state.
pub fn own_arena() -> bool {
    static ARENA: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    // SAFETY: `arenas.create` reads an `unsigned` and `thread.arena` writes one, as
    // jemalloc's mallctl documents them
    let arena = *ARENA
        .get_or_init(|| unsafe { tikv_jemalloc_ctl::raw::read::<u32>(b"arenas.create\0").ok() });
    arena.is_some_and(|arena| unsafe {
        tikv_jemalloc_ctl::raw::write(b"thread.arena\0", arena).is_ok()
    })
}

/// Sets thread `tid`'s (`0`: the calling thread's) scheduling policy; whether it took.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: takes plain integers and a pointer to a local that outlives the call, and
    // touches no other memory of ours
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// The CPUs thread `tid` (`0`: the calling thread) may run on.
fn cpus_of(tid: libc::pid_t) -> Option<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity writes at most its size
    // into it, and CPU_ISSET reads it within bounds for any index below CPU_SETSIZE
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some(
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect(),
        )
    }
}

/// Has thread `tid` (`0`: the calling thread) run only on `cpus`; whether it took (a thread
/// that has ended meanwhile does not).
fn set_cpus(tid: libc::pid_t, cpus: &[usize]) -> bool {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET ignores indices beyond its size,
    // and sched_setaffinity reads exactly its size
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Every thread of this process now. Listing `/proc/self/task` while threads end can skip
/// one that stays, so it is listed again until a listing finds no thread the ones before
/// missed (at most 4 times).
fn process_threads() -> Vec<libc::pid_t> {
    let list = || -> Vec<libc::pid_t> {
        std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut threads = list();
    for _ in 0..3 {
        let missed: Vec<libc::pid_t> = list()
            .into_iter()
            .filter(|t| !threads.contains(t))
            .collect();
        if missed.is_empty() {
            break;
        }
        threads.extend(missed);
    }
    threads
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The background takes the last quarter of the CPUs, at least one, but never the only one.
    #[test]
    fn the_serving_threads_keep_three_quarters_of_the_cpus() {
        let kept: Vec<usize> = [1, 2, 3, 4, 8, 16].map(serving_share).to_vec();
        assert_eq!(kept, vec![1, 1, 2, 3, 6, 12]);
    }

    /// A background thread allocates from an arena no other thread was given.
    #[test]
    fn a_background_thread_has_an_arena_of_its_own() {
        // SAFETY: `thread.arena` reads an `unsigned`
        let arena = || unsafe { tikv_jemalloc_ctl::raw::read::<u32>(b"thread.arena\0") };
        let before = arena().unwrap();
        let lowered = std::thread::spawn(move || (own_arena(), arena().unwrap()))
            .join()
            .unwrap();
        assert!(lowered.0);
        assert_ne!(lowered.1, before);
        assert_eq!(arena().unwrap(), before);
    }

    /// While a thread is lowered, it and the process's other threads run on CPUs apart,
    /// threads started meanwhile included; once restored, every thread has all of them again.
    #[test]
    fn background_threads_and_the_others_run_on_cpus_apart_until_restored() {
        let all = cpus_of(0).unwrap();
        if all.len() < 2 || !Background::available() {
            return; // nothing to split here
        }
        let background = std::sync::Arc::new(Background::default());
        let (lowered, started) = {
            let background = std::sync::Arc::clone(&background);
            std::thread::spawn(move || {
                background.lower();
                (
                    cpus_of(0).unwrap(),
                    std::thread::spawn(|| cpus_of(0).unwrap()).join().unwrap(),
                )
            })
            .join()
            .unwrap()
        };
        let here = cpus_of(0).unwrap();
        let later = std::thread::spawn(|| cpus_of(0).unwrap()).join().unwrap();
        background.restore();
        let after = cpus_of(0).unwrap();
        assert!(!lowered.is_empty() && !here.is_empty());
        assert!(
            lowered.iter().all(|c| !here.contains(c)),
            "{lowered:?} {here:?}"
        );
        assert_eq!(
            started, lowered,
            "a background thread's threads stay with it"
        );
        assert_eq!(
            later, here,
            "a thread started by another stays off the background's"
        );
        assert_eq!(after, all);

        // two at once: the first restored leaves the split to the second
        let (first, second) = (Background::default(), Background::default());
        std::thread::scope(|scope| {
            scope.spawn(|| first.lower()).join().unwrap();
            scope.spawn(|| second.lower()).join().unwrap();
        });
        first.restore();
        assert_eq!(
            cpus_of(0).unwrap(),
            here,
            "one still lowered keeps the split"
        );
        second.restore();
        assert_eq!(cpus_of(0).unwrap(), all);
    }
}
