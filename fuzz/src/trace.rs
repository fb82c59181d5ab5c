//! SWF traces (`harvest_experiments::swf`), read as the simulator reads them
//! (`harvest_experiments::sim::trace::Trace`).

use std::path::Path;

use harvest_experiments::sim::trace::Trace;
use harvest_experiments::swf::SwfReader;

/// Any bytes as an SWF trace: reading never panics, every error names the trace, and the jobs
/// the simulator keeps have what it needs (a run time and processors) and counts that add up.
pub fn swf_trace(data: &[u8]) {
    let path = Path::new("fuzz.swf");
    let open = || SwfReader::from_reader(path, Box::new(std::io::Cursor::new(data.to_vec())));
    let Ok(reader) = open() else {
        return;
    };
    let mut seen = 0u64;
    for job in reader {
        match job {
            Ok(j) => {
                seen += 1;
                assert!(j.procs().is_none_or(|p| p > 0));
                assert!(j.mem_per_proc_kib().is_none() || j.mem_per_node_mib().is_none());
            }
            Err(e) => assert!(e.to_string().contains("fuzz.swf"), "{e}"),
        }
    }
    let Ok(trace) = open().and_then(Trace::from_reader) else {
        return;
    };
    let c = trace.counts;
    assert_eq!(c.records, seen, "every record is counted once");
    assert_eq!(c.jobs, trace.jobs.len() as u64);
    assert_eq!(
        c.records,
        c.jobs + c.skipped_no_runtime + c.skipped_no_procs
    );
    assert!(trace.jobs.windows(2).all(|w| w[0].submit <= w[1].submit));
    for j in &trace.jobs {
        assert!(j.run > 0 && j.req > 0 && j.procs > 0, "{j:?}");
        assert!(j.start() >= j.submit, "{j:?}");
    }
    assert!(trace.span_s() >= 0);
}
