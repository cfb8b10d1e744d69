//! The `throughline` command. All logic lives in the library; see `cli`.

/// jemalloc: the dataflow allocates and frees many small batches (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`; `_RJEM_MALLOC_CONF` in the environment still
/// overrides them): pages freed are returned to the system after 1 s instead of 10 s. A
/// long-lived engine frees a steady stream of memory (events retire, arrangements merge,
/// SPEC section 9), and its resident memory should follow what it holds: on a year of
/// steady traffic this took peak RSS from 1.31x to 1.29x of its value after a third of it
/// (tests/bench/performance.md, "Issue 30").
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Conf = Conf(c"dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer that may be shared (it points to a constant).
#[repr(transparent)]
struct Conf(*const std::ffi::c_char);

// SAFETY: the pointer is to a `'static` constant that nothing writes.
unsafe impl Sync for Conf {}

fn main() {
    // fail points named in `FAILPOINTS` (test builds only: elsewhere this does nothing)
    let faults = fail::FailScenario::setup();
    let code = throughline::cli::main();
    faults.teardown();
    std::process::exit(code);
}
