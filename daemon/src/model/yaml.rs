//! Reading a YAML document that a peer sent, within bounds of memory and
//! time.
//!
//! `yaml_serde` (libyaml underneath) is safe against unbounded recursion in
//! the deserializer but not against the two classic shapes of a hostile
//! document:
//!
//! * **Deep flow nesting.** libyaml's scanner walks its stack of possible
//!   simple keys (one per open `[` or `{`) on every token, so the cost of a
//!   document grows with its length times its nesting: 100,000 `[` take tens
//!   of seconds of CPU before the deserializer's depth limit is reached.
//! * **Alias expansion.** Every `*alias` replays its anchor's whole subtree;
//!   nested anchors multiply (a "billion laughs"), so half a megabyte of text
//!   can ask the deserializer for gigabytes.
//!
//! [`check`] runs the same parser event by event, before anything is built,
//! and stops at the first event past a limit: the nesting depth, or the size
//! the document would have once every alias is expanded. Only a document that
//! passes goes to `yaml_serde`. [`Limits`] name the numbers, and the errors
//! name the limit that was hit.
//!
//! The check uses libyaml itself (the `libyaml-rs` translation that
//! `yaml_serde` is built on), not a second parser, so the two can never
//! disagree about where a collection starts or what an alias refers to.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::mem::MaybeUninit;

use libyaml_rs as sys;

/// The bounds a document must stay within.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest document, in bytes.
    pub max_bytes: usize,
    /// The deepest nesting of sequences and mappings.
    pub max_depth: usize,
    /// The largest expanded size: every scalar's bytes plus
    /// [`NODE_WEIGHT`] per node, counted once for each time an alias
    /// repeats it.
    pub max_expanded: usize,
}

/// What a node costs in the expanded size beyond its text: about what it
/// costs in memory once deserialized (a `String` or a `Vec` header).
pub const NODE_WEIGHT: usize = 32;

impl Limits {
    /// The limits for configuration documents (apply, dry-run, the config
    /// file): far beyond any real configuration, far below what would
    /// trouble the vault.
    pub const DOCUMENT: Self = Self {
        max_bytes: mcplexer_proto::MAX_DOCUMENT_SIZE,
        max_depth: 64,
        max_expanded: 16 * 1024 * 1024,
    };
}

/// Why a document was refused before it was deserialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// The document is longer than [`Limits::max_bytes`].
    TooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Sequences and mappings nest deeper than [`Limits::max_depth`].
    TooDeep {
        /// The limit.
        max: usize,
        /// 1-based line of the collection that went past it.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// Aliases expand the document past [`Limits::max_expanded`].
    ExpandsTooFar {
        /// The limit.
        max: usize,
        /// 1-based line of the event that went past it.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// libyaml itself refused the text (a syntax error): left to
    /// `yaml_serde`, whose message names the problem in the same words.
    Syntax,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { bytes, max } => write!(
                f,
                "the document is {bytes} bytes long; the limit is {max} bytes (split it into several documents)"
            ),
            Self::TooDeep { max, line, column } => write!(
                f,
                "sequences and mappings nest deeper than {max} levels at line {line} column {column}; the limit is {max}"
            ),
            Self::ExpandsTooFar { max, line, column } => write!(
                f,
                "aliases expand the document past {max} bytes at line {line} column {column}; the limit is {max} bytes of expanded content (write the repeated parts out, or use fewer aliases)"
            ),
            Self::Syntax => f.write_str("invalid YAML"),
        }
    }
}

impl std::error::Error for LimitError {}

/// Checks `text` against `limits` without building anything: one pass of
/// libyaml's event parser, stopped at the first event past a limit.
/// Syntax errors are reported as [`LimitError::Syntax`], to be explained by
/// the deserializer that runs next.
pub fn check(text: &str, limits: Limits) -> Result<(), LimitError> {
    if text.len() > limits.max_bytes {
        return Err(LimitError::TooLong {
            bytes: text.len(),
            max: limits.max_bytes,
        });
    }
    let mut parser = Parser::new(text.as_bytes());
    let mut walk = Walk::new(limits);
    loop {
        let event = parser.next().ok_or(LimitError::Syntax)?;
        let done = walk.step(&event)?;
        if done {
            return Ok(());
        }
    }
}

/// Why a document could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Past a limit, before anything was built.
    Limit(LimitError),
    /// Not a valid document of the expected shape (syntax, unknown field,
    /// wrong type), as `yaml_serde` says, with line and column.
    Invalid(yaml_serde::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Limit(e) => e.fmt(f),
            Self::Invalid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {}

/// Checks `text` against `limits`, then deserializes it. An empty (or
/// all-blank) document is `T::default()`.
pub fn from_str<T>(text: &str, limits: Limits) -> Result<T, ReadError>
where
    T: serde::de::DeserializeOwned + Default,
{
    match check(text, limits) {
        Ok(()) | Err(LimitError::Syntax) => {}
        Err(e) => return Err(ReadError::Limit(e)),
    }
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    yaml_serde::from_str(text).map_err(ReadError::Invalid)
}

/// An open sequence or mapping: its anchor, and what it has expanded to so
/// far.
struct Open {
    anchor: Option<Vec<u8>>,
    size: usize,
}

/// The state of one pass: the open collections, the expanded size of every
/// anchor seen, the total.
struct Walk {
    limits: Limits,
    open: Vec<Open>,
    anchors: HashMap<Vec<u8>, usize>,
    total: usize,
}

impl Walk {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            open: Vec::new(),
            anchors: HashMap::new(),
            total: 0,
        }
    }

    /// Takes one event; `Ok(true)` at the end of the stream.
    fn step(&mut self, event: &Event) -> Result<bool, LimitError> {
        match &event.kind {
            EventKind::StreamEnd => return Ok(true),
            EventKind::Other => {}
            EventKind::Start(anchor) => {
                if self.open.len() >= self.limits.max_depth {
                    return Err(LimitError::TooDeep {
                        max: self.limits.max_depth,
                        line: event.line,
                        column: event.column,
                    });
                }
                self.add(NODE_WEIGHT, event)?;
                self.open.push(Open {
                    anchor: anchor.clone(),
                    size: NODE_WEIGHT,
                });
            }
            EventKind::End => {
                if let Some(done) = self.open.pop() {
                    if let Some(parent) = self.open.last_mut() {
                        parent.size = parent.size.saturating_add(done.size);
                    }
                    if let Some(anchor) = done.anchor {
                        self.anchors.insert(anchor, done.size);
                    }
                }
            }
            EventKind::Scalar { anchor, len } => {
                let size = NODE_WEIGHT.saturating_add(*len);
                self.add(size, event)?;
                self.nest(size);
                if let Some(anchor) = anchor {
                    self.anchors.insert(anchor.clone(), size);
                }
            }
            EventKind::Alias(name) => {
                // An unknown alias is a syntax error that the deserializer
                // reports; it costs nothing here.
                let size = self.anchors.get(name).copied().unwrap_or(0);
                self.add(size, event)?;
                self.nest(size);
            }
        }
        Ok(false)
    }

    /// Adds `size` to the total, refusing past the limit.
    fn add(&mut self, size: usize, event: &Event) -> Result<(), LimitError> {
        self.total = self.total.saturating_add(size);
        if self.total > self.limits.max_expanded {
            return Err(LimitError::ExpandsTooFar {
                max: self.limits.max_expanded,
                line: event.line,
                column: event.column,
            });
        }
        Ok(())
    }

    /// Counts `size` into the innermost open collection.
    fn nest(&mut self, size: usize) {
        if let Some(parent) = self.open.last_mut() {
            parent.size = parent.size.saturating_add(size);
        }
    }
}

/// The part of a libyaml event the walk needs.
struct Event {
    kind: EventKind,
    line: u64,
    column: u64,
}

enum EventKind {
    StreamEnd,
    /// A sequence or mapping starts, with its anchor.
    Start(Option<Vec<u8>>),
    /// A sequence or mapping ends.
    End,
    /// A scalar, with its anchor and length in bytes.
    Scalar {
        anchor: Option<Vec<u8>>,
        len: usize,
    },
    /// An alias, by the anchor it names.
    Alias(Vec<u8>),
    /// Stream or document start, document end.
    Other,
}

/// libyaml's event parser over a borrowed input. Boxed: libyaml keeps a
/// pointer to the parser itself as its read handler's data, so it must not
/// move once the input is set.
struct Parser<'input> {
    sys: Box<MaybeUninit<sys::yaml_parser_t>>,
    _input: &'input [u8],
    failed: bool,
}

impl<'input> Parser<'input> {
    fn new(input: &'input [u8]) -> Self {
        let mut boxed = Box::new(MaybeUninit::<sys::yaml_parser_t>::uninit());
        let ptr = boxed.as_mut_ptr();
        // SAFETY: `ptr` points to a live, writable, properly aligned
        // allocation of a `yaml_parser_t`; `yaml_parser_initialize` zeroes
        // it and allocates its buffers (it fails only if an allocation does,
        // which aborts in Rust). `set_input_string` stores `input`'s pointer
        // and length, and `input` outlives the parser (lifetime `'input`);
        // the box never moves the parser again.
        let failed = unsafe {
            let failed = sys::yaml_parser_initialize(ptr).fail;
            if !failed {
                sys::yaml_parser_set_encoding(ptr, sys::YAML_UTF8_ENCODING);
                sys::yaml_parser_set_input_string(ptr, input.as_ptr(), input.len() as u64);
            }
            failed
        };
        Self {
            sys: boxed,
            _input: input,
            failed,
        }
    }

    /// The next event, or `None` on a syntax error.
    fn next(&mut self) -> Option<Event> {
        if self.failed {
            return None;
        }
        let parser = self.sys.as_mut_ptr();
        let mut raw = MaybeUninit::<sys::yaml_event_t>::uninit();
        // SAFETY: the parser was initialised in `new` (not `failed`) and
        // has not moved. `yaml_parser_parse` either fails, leaving `raw`
        // unset (we return before reading it), or fully initialises `raw`,
        // which we read through the union member that its `type_` names and
        // then release once with `yaml_event_delete`. Anchor strings are
        // NUL-terminated and owned by the event until that release; they
        // are copied first.
        unsafe {
            if sys::yaml_parser_parse(parser, raw.as_mut_ptr()).fail {
                self.failed = true;
                return None;
            }
            let event = raw.as_mut_ptr();
            let anchor = |ptr: *mut u8| -> Option<Vec<u8>> {
                (!ptr.is_null()).then(|| CStr::from_ptr(ptr.cast()).to_bytes().to_vec())
            };
            let kind = match (*event).type_ {
                sys::YAML_STREAM_END_EVENT => EventKind::StreamEnd,
                sys::YAML_SEQUENCE_START_EVENT => {
                    EventKind::Start(anchor((*event).data.sequence_start.anchor))
                }
                sys::YAML_MAPPING_START_EVENT => {
                    EventKind::Start(anchor((*event).data.mapping_start.anchor))
                }
                sys::YAML_SEQUENCE_END_EVENT | sys::YAML_MAPPING_END_EVENT => EventKind::End,
                sys::YAML_SCALAR_EVENT => EventKind::Scalar {
                    anchor: anchor((*event).data.scalar.anchor),
                    len: usize::try_from((*event).data.scalar.length).unwrap_or(usize::MAX),
                },
                sys::YAML_ALIAS_EVENT => {
                    EventKind::Alias(anchor((*event).data.alias.anchor).unwrap_or_default())
                }
                _ => EventKind::Other,
            };
            let mark = (*event).start_mark;
            sys::yaml_event_delete(event);
            Some(Event {
                kind,
                line: mark.line.saturating_add(1),
                column: mark.column.saturating_add(1),
            })
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: the parser was initialised in `new` (even when parsing
        // later failed, its buffers are allocated and owned by it), and is
        // deleted exactly once, here.
        unsafe { sys::yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            max_depth: 8,
            max_expanded: 64 * 1024,
        }
    }

    #[test]
    fn ordinary_documents_pass() {
        let doc = "a: &x [1, 2, {b: c}]\nb: *x\nc:\n  - d: 'e'\n    f: \"g\"\n";
        assert_eq!(check(doc, small()), Ok(()));
        assert_eq!(check("", small()), Ok(()));
    }

    #[test]
    fn deep_flow_nesting_stops_at_the_limit() {
        let doc = "[".repeat(100_000);
        match check(&doc, small()) {
            Err(LimitError::TooDeep {
                max: 8,
                line: 1,
                column: 9,
            }) => {}
            other => panic!("{other:?}"),
        }
        let block = "- ".repeat(100_000) + "x\n";
        assert!(matches!(
            check(&block, small()),
            Err(LimitError::TooDeep { .. })
        ));
        let just = "[".repeat(8) + &"]".repeat(8);
        assert_eq!(check(&just, small()), Ok(()));
    }

    #[test]
    fn alias_expansion_is_counted_through_nested_anchors() {
        // Each level repeats the previous one ten times.
        let mut doc = String::from("a0: &a0 [\"0123456789\"]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            let list = [prev.as_str(); 10].join(", ");
            doc.push_str(&format!("a{i}: &a{i} [{list}]\n"));
        }
        assert!(doc.len() < 2000);
        match check(&doc, small()) {
            Err(LimitError::ExpandsTooFar { max, .. }) => assert_eq!(max, 64 * 1024),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_long_document_is_refused_before_parsing() {
        let limits = Limits {
            max_bytes: 10,
            ..small()
        };
        assert_eq!(
            check("a: 0123456789", limits),
            Err(LimitError::TooLong { bytes: 13, max: 10 })
        );
    }

    #[test]
    fn syntax_errors_are_left_to_the_deserializer() {
        assert_eq!(check("a: [1, 2", small()), Err(LimitError::Syntax));
    }
}
