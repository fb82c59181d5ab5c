//! A streaming reader for the Standard Workload Format (Parallel Workloads Archive).
//!
//! One job per line, 18 whitespace-separated fields, `-1` for unknown; header comments start with
//! `;` and describe the machine (`MaxNodes`, `MaxProcs`). Alea's extended SWF (MetaCentrum) adds
//! fields after the 18th, of which the queue's name (field 20) is read. Gzip is detected by the file's magic bytes. Jobs are
//! yielded one at a time, so a trace of any length is read in constant memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

/// The longest line read, in bytes. An SWF record is under 200 bytes (Alea's extended ones a few
/// hundred); a longer line is not SWF, and a gzip file that expands to one endless line must not
/// be buffered whole.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The largest time accepted, in seconds either side of the trace's zero (about 31,700 years):
/// the simulator adds and subtracts times, which must not overflow.
pub const MAX_TIME_S: i64 = 1_000_000_000_000;

/// The field of Alea's extended SWF that names the job's queue (e.g. `q_2d`).
pub const ALEA_QUEUE_FIELD: usize = 20;

/// An SWF file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SwfError {
    #[error("cannot read SWF trace {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: field {field} ({name}) is {value:?}, not a number; is this an SWF file?"
    )]
    Field {
        path: PathBuf,
        line: u64,
        field: usize,
        name: &'static str,
        value: String,
    },
    #[error("{path}:{line}: {found} fields, SWF needs at least 18; is this an SWF file?")]
    Short {
        path: PathBuf,
        line: u64,
        found: usize,
    },
    #[error("{path}:{line}: line longer than {MAX_LINE_BYTES} bytes; is this an SWF file?")]
    LongLine { path: PathBuf, line: u64 },
    #[error("{path}:{line}: field {field} ({name}) is {value} s, beyond ±{MAX_TIME_S} s")]
    Time {
        path: PathBuf,
        line: u64,
        field: usize,
        name: &'static str,
        value: i64,
    },
}

/// The header's machine description (what it gives; `None` when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwfHeader {
    pub max_nodes: Option<u64>,
    pub max_procs: Option<u64>,
    pub computer: Option<String>,
    pub acknowledge: Option<String>,
}

/// One job record; times in seconds, memory in KiB per processor, `None` for SWF's `-1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwfJob {
    pub id: u64,
    pub submit: i64,
    pub wait: Option<i64>,
    pub run: Option<i64>,
    pub procs: Option<u64>,
    pub used_mem_kib: Option<u64>,
    pub req_procs: Option<u64>,
    pub req_time: Option<i64>,
    pub req_mem_kib: Option<u64>,
    /// SWF field 12: the user's number (fair share accounts), `None` for `-1`.
    pub user: Option<u32>,
    /// SWF field 13: the group's number.
    pub group: Option<u32>,
    /// The job's queue: an index into [`SwfReader::queues`] (SWF field 15's number, or the
    /// queue name in field 20 of Alea's extended SWF); `None` when unknown.
    pub queue: Option<u32>,
    /// Alea's extended SWF (more than 18 fields, as MetaCentrum's): field 10 is requested memory
    /// in bytes per node, and field 7 is not per-processor memory.
    pub extended: bool,
}

impl SwfJob {
    /// Processors the job held: allocated, else requested.
    pub fn procs(&self) -> Option<u64> {
        self.procs.or(self.req_procs).filter(|&p| p > 0)
    }

    /// Memory per processor in KiB: used, else requested (standard SWF only).
    pub fn mem_per_proc_kib(&self) -> Option<u64> {
        if self.extended {
            return None;
        }
        self.used_mem_kib.or(self.req_mem_kib).filter(|&m| m > 0)
    }

    /// Memory per node in MiB when the record gives it that way (Alea's extended SWF).
    pub fn mem_per_node_mib(&self) -> Option<u64> {
        if !self.extended {
            return None;
        }
        self.req_mem_kib
            .filter(|&b| b > 0)
            .map(|bytes| bytes.div_ceil(1 << 20))
    }
}

/// Streams the jobs of an SWF file.
pub struct SwfReader {
    path: PathBuf,
    reader: BufReader<Box<dyn Read + Send>>,
    line_no: u64,
    header: SwfHeader,
    /// The first job line, read while parsing the header.
    pending: Option<String>,
    /// Queue names in the order first seen, and their indices.
    queues: Vec<String>,
    queue_ids: std::collections::HashMap<String, u32>,
}

impl std::fmt::Debug for SwfReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwfReader")
            .field("path", &self.path)
            .field("line", &self.line_no)
            .finish()
    }
}

/// Opens a file, decompressing it when it starts with the gzip magic bytes.
pub fn open_maybe_gz(path: &Path) -> std::io::Result<Box<dyn Read + Send>> {
    let mut file = BufReader::new(File::open(path)?);
    let gz = file.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

impl SwfReader {
    /// Opens a trace and reads its header.
    pub fn open(path: &Path) -> Result<Self, SwfError> {
        let io = |source| SwfError::Io {
            path: path.to_owned(),
            source,
        };
        let reader = open_maybe_gz(path).map_err(io)?;
        Self::from_reader(path, reader)
    }

    /// Reads from any source (tests); `path` only names it in errors.
    pub fn from_reader(path: &Path, reader: Box<dyn Read + Send>) -> Result<Self, SwfError> {
        let mut r = Self {
            path: path.to_owned(),
            reader: BufReader::with_capacity(1 << 16, reader),
            line_no: 0,
            header: SwfHeader::default(),
            pending: None,
            queues: Vec::new(),
            queue_ids: std::collections::HashMap::new(),
        };
        while let Some(line) = r.next_line()? {
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            let Some(comment) = t.strip_prefix(';') else {
                r.pending = Some(line);
                break;
            };
            if let Some((key, value)) = comment.split_once(':') {
                let value = value.trim();
                match key.trim() {
                    "MaxNodes" => r.header.max_nodes = value.parse().ok(),
                    "MaxProcs" => r.header.max_procs = value.parse().ok(),
                    "Computer" => r.header.computer = Some(value.to_owned()),
                    "Acknowledge" => r.header.acknowledge = Some(value.to_owned()),
                    _ => {}
                }
            }
        }
        Ok(r)
    }

    pub fn header(&self) -> &SwfHeader {
        &self.header
    }

    /// The queue names seen so far (all of them once the jobs are read), by [`SwfJob::queue`].
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    fn queue_id(&mut self, name: &str) -> u32 {
        if let Some(&q) = self.queue_ids.get(name) {
            return q;
        }
        let q = self.queues.len() as u32;
        self.queues.push(name.to_owned());
        self.queue_ids.insert(name.to_owned(), q);
        q
    }

    /// The next line without its `\n` (or `\r\n`), at most [`MAX_LINE_BYTES`] long.
    fn next_line(&mut self) -> Result<Option<String>, SwfError> {
        let io = |source| SwfError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = Vec::new();
        // The limit, its `\r\n`, and no more: a longer line is refused unread.
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 2)
            .read_until(b'\n', &mut line)
            .map_err(io)?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(SwfError::LongLine {
                path: self.path.clone(),
                line: self.line_no,
            });
        }
        String::from_utf8(line).map(Some).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {} is not UTF-8", self.line_no),
            ))
        })
    }

    fn parse(&mut self, line: &str) -> Result<SwfJob, SwfError> {
        const NAMES: [&str; 16] = [
            "job id",
            "submit time",
            "wait time",
            "run time",
            "allocated processors",
            "average CPU time",
            "used memory",
            "requested processors",
            "requested time",
            "requested memory",
            "status",
            "user id",
            "group id",
            "executable number",
            "queue number",
            "partition number",
        ];
        let mut f = [0i64; 16];
        let mut count = 0;
        let mut queue_name = None;
        for (i, tok) in line.split_ascii_whitespace().enumerate() {
            count = i + 1;
            if i == ALEA_QUEUE_FIELD - 1 {
                queue_name = Some(tok);
            }
            if i < NAMES.len() {
                f[i] = tok
                    .parse::<i64>()
                    .or_else(|_| tok.parse::<f64>().map(|v| v as i64))
                    .map_err(|_| SwfError::Field {
                        path: self.path.clone(),
                        line: self.line_no,
                        field: i + 1,
                        name: NAMES[i],
                        value: tok.to_owned(),
                    })?;
            }
        }
        if count < 18 {
            return Err(SwfError::Short {
                path: self.path.clone(),
                line: self.line_no,
                found: count,
            });
        }
        // Times the simulator adds (submit + wait, start + run): bounded so that sums cannot
        // overflow.
        for i in [1, 2, 3, 8] {
            if !(-MAX_TIME_S..=MAX_TIME_S).contains(&f[i]) {
                return Err(SwfError::Time {
                    path: self.path.clone(),
                    line: self.line_no,
                    field: i + 1,
                    name: NAMES[i],
                    value: f[i],
                });
            }
        }
        let known = |v: i64| (v >= 0).then_some(v);
        let known_u = |v: i64| (v >= 0).then_some(v as u64);
        let queue = match (queue_name, known_u(f[14])) {
            (Some(name), _) if count > 18 => Some(self.queue_id(name)),
            (_, Some(n)) => Some(self.queue_id(&n.to_string())),
            _ => None,
        };
        Ok(SwfJob {
            id: f[0].max(0) as u64,
            submit: f[1],
            wait: known(f[2]),
            run: known(f[3]),
            procs: known_u(f[4]),
            used_mem_kib: known_u(f[6]),
            req_procs: known_u(f[7]),
            req_time: known(f[8]),
            req_mem_kib: known_u(f[9]),
            user: known_u(f[11]).map(|v| v.min(u64::from(u32::MAX - 1)) as u32),
            group: known_u(f[12]).map(|v| v.min(u64::from(u32::MAX - 1)) as u32),
            extended: count > 18,
            queue,
        })
    }
}

impl Iterator for SwfReader {
    type Item = Result<SwfJob, SwfError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.pending.take() {
                Some(l) => l,
                None => match self.next_line() {
                    Ok(Some(l)) => l,
                    Ok(None) => return None,
                    Err(e) => return Some(Err(e)),
                },
            };
            let t = line.trim();
            if t.is_empty() || t.starts_with(';') {
                continue;
            }
            return Some(self.parse(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(text: &'static str) -> SwfReader {
        SwfReader::from_reader(Path::new("t.swf"), Box::new(text.as_bytes())).unwrap()
    }

    #[test]
    fn header_and_jobs_stream() {
        let mut r = reader(
            "; Computer: Test box\n; MaxNodes: 10\n; MaxProcs: 40\n;\n\
             1 0 5 100 8 -1 -1 8 200 -1 1 1 1 -1 1 -1 -1 -1\n\
             2 10 -1 50 -1 -1 2048 4 -1 4096 1 1 1 -1 1 -1 -1 -1 extra {1,2} fields\n",
        );
        assert_eq!(r.header().max_nodes, Some(10));
        assert_eq!(r.header().max_procs, Some(40));
        assert_eq!(r.header().computer.as_deref(), Some("Test box"));
        let a = r.next().unwrap().unwrap();
        assert_eq!(
            (a.id, a.submit, a.wait, a.run, a.procs()),
            (1, 0, Some(5), Some(100), Some(8))
        );
        assert_eq!(a.mem_per_proc_kib(), None);
        let b = r.next().unwrap().unwrap();
        assert_eq!(b.procs(), Some(4), "requested when allocated is unknown");
        assert!(b.extended, "more than 18 fields: Alea's extended SWF");
        assert_eq!(b.mem_per_proc_kib(), None, "extended: not per processor");
        assert_eq!(
            b.mem_per_node_mib(),
            Some(1),
            "4096 bytes per node, rounded up"
        );
        assert_eq!(b.req_time, None);
        assert!(r.next().is_none());
    }

    /// Found with the `swf_trace` fuzz target (its body panicked on this input): a submit time
    /// near `i64::MAX` made `TraceJob::start` (submit + wait) overflow, a panic in the simulator.
    #[test]
    fn times_beyond_the_range_are_refused() {
        let mut r = reader(
            "9223372036854775807 9223372036854775807 5 100 8 -1 -1 8 200 -1 1 1 1 -1 1 -1 -1 -1\n\
             2 -9223372036854775808 5 100 8 -1 -1 8 200 -1 1 1 1 -1 1 -1 -1 -1\n\
             3 0 1e300 100 8 -1 -1 8 200 -1 1 1 1 -1 1 -1 -1 -1\n\
             4 0 5 100 8 -1 -1 8 -1000000000001 -1 1 1 1 -1 1 -1 -1 -1\n\
             5 1000000000000 5 100 8 -1 -1 8 200 -1 1 1 1 -1 1 -1 -1 -1\n",
        );
        let e = r.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("t.swf:1: field 2 (submit time)"), "{e}");
        let e = r.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("t.swf:2: field 2 (submit time)"), "{e}");
        let e = r.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("t.swf:3: field 3 (wait time)"), "{e}");
        let e = r.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("t.swf:4: field 9 (requested time)"), "{e}");
        let j = r.next().unwrap().unwrap();
        assert_eq!(j.submit, MAX_TIME_S, "the bound itself is accepted");
    }

    /// A line without an end (a gzip file that expands to gigabytes of one line) is refused
    /// after [`MAX_LINE_BYTES`] instead of being buffered whole.
    #[test]
    fn an_endless_line_is_refused_at_the_limit() {
        let endless = std::io::repeat(b'7').take(16 * MAX_LINE_BYTES as u64);
        let e = SwfReader::from_reader(Path::new("t.swf"), Box::new(endless)).unwrap_err();
        assert!(matches!(e, SwfError::LongLine { line: 1, .. }), "{e}");
        let endless = std::io::repeat(b'7').take(16 * MAX_LINE_BYTES as u64);
        let first = b"1 0 5 100 8 -1 -1 8 200 -1 1 1 1 -1 1 -1 -1 -1\n".to_vec();
        let body = std::io::Cursor::new(first).chain(endless);
        let mut r = SwfReader::from_reader(Path::new("t.swf"), Box::new(body)).unwrap();
        assert_eq!(r.next().unwrap().unwrap().id, 1);
        let e = r.next().unwrap().unwrap_err();
        assert!(matches!(e, SwfError::LongLine { line: 2, .. }), "{e}");
        // Lines up to the limit, with \r\n endings, still read.
        let mut line = "1 0 5 100 8 -1 -1 8 200 -1 1 1 1 -1 1 -1 -1 -1".to_owned();
        line.push_str(&" ".repeat(MAX_LINE_BYTES - line.len()));
        let text = format!("; MaxProcs: 4\r\n{line}\r\n");
        let mut r =
            SwfReader::from_reader(Path::new("t.swf"), Box::new(std::io::Cursor::new(text)))
                .unwrap();
        assert_eq!(r.header().max_procs, Some(4));
        assert_eq!(r.next().unwrap().unwrap().id, 1);
        assert!(r.next().is_none());
    }

    #[test]
    fn queues_are_named_by_number_or_by_alea_name() {
        let mut r = reader(
            "1 0 5 100 8 -1 -1 8 200 -1 1 1 1 -1 2 -1 -1 -1\n\
             2 0 5 100 8 -1 -1 8 200 -1 1 1 1 -1 -1 -1 -1 -1\n\
             3 0 5 100 8 -1 -1 8 200 -1 1 1 1 -1 -1 1 1 1 {4,4} q_2d 1:ppn=8\n\
             4 0 5 100 8 -1 -1 8 200 -1 1 1 1 -1 2 -1 -1 -1\n",
        );
        let q: Vec<Option<u32>> = r.by_ref().map(|j| j.unwrap().queue).collect();
        assert_eq!(q, [Some(0), None, Some(1), Some(0)]);
        assert_eq!(r.queues(), ["2", "q_2d"]);
    }

    #[test]
    fn bad_lines_name_the_line_and_field() {
        let mut r = reader("1 0 x 100 8 -1 -1 8 200 -1 1 1 1 -1 1 -1 -1 -1\n1 2 3\n");
        let e = r.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("t.swf:1: field 3 (wait time) is \"x\""), "{e}");
        let e = r.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("t.swf:2: 3 fields"), "{e}");
    }
}
