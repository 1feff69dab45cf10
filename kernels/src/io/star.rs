//! STAR files as RELION writes them: one `loop_` table per data block.
//!
//! Writing ([`write_star`]) produces, for each [`StarTable`]:
//!
//! ```text
//! # version 30001
//!
//! data_micrographs
//!
//! loop_
//! _rlnMicrographName #1
//! _rlnDefocusU #2
//! average/a.mrc 15012.5
//! average/b.mrc 14877.25
//!
//! ```
//!
//! Values are separated by one space. [`StarValue::Int`] is written as is; [`StarValue::Num`]
//! with six decimals, trailing zeros trimmed down to one (`2.0`, `0.834`), in exponent form
//! (`1.5e-7`) when its magnitude is below 10⁻³ or at least 10¹⁵, and as `nan`, `inf` or `-inf`
//! when not finite. [`StarValue::Str`] is written bare unless it would read back as something
//! else — empty, containing whitespace, starting with `_`, `#`, `'` or `"`, starting with a STAR
//! keyword (`data_`, `loop_`, `save_`, `global_`, `stop_`) or looking like a number — in which
//! case it is put in double quotes. A string containing a double quote or a control character
//! cannot be written and is an error. The file is written under a temporary name in the same
//! directory and renamed into place, so a failure never leaves a partial file.
//!
//! Reading ([`read_star`]) parses such files back: comments (`#` at the start of a token),
//! blank lines, `data_` blocks each holding exactly one `loop_` with one row per line, values in
//! double or single quotes (always [`StarValue::Str`]). A bare value is an
//! [`StarValue::Int`] when it is an optional sign and digits that fit an `i64`, a
//! [`StarValue::Num`] when it is otherwise a decimal number (or `nan`, `inf`, `-inf`), and a
//! [`StarValue::Str`] otherwise; so every table [`write_star`] accepts reads back equal, except
//! that numbers keep only the precision written. Key-value (non-loop) blocks are refused.

use super::atomic::write_atomic;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The version comment RELION 3.1 and later write before each data block.
pub const VERSION_LINE: &str = "# version 30001";

/// Words that may not start a bare value, because a reader would take them for syntax.
const RESERVED_PREFIXES: [&str; 5] = ["data_", "loop_", "save_", "global_", "stop_"];

/// One value of a STAR table.
#[derive(Debug, Clone, PartialEq)]
pub enum StarValue {
    /// Text, e.g. a file name.
    Str(String),
    /// A real number, written with six decimals at most.
    Num(f64),
    /// An integer, written exactly.
    Int(i64),
}

impl StarValue {
    /// The value as a number: `Num` as is, `Int` converted, `None` for `Str`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            StarValue::Num(v) => Some(*v),
            StarValue::Int(v) => Some(*v as f64),
            StarValue::Str(_) => None,
        }
    }

    /// The text of a `Str`; `None` for numbers.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            StarValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&str> for StarValue {
    fn from(s: &str) -> StarValue {
        StarValue::Str(s.to_string())
    }
}

impl From<String> for StarValue {
    fn from(s: String) -> StarValue {
        StarValue::Str(s)
    }
}

impl From<f64> for StarValue {
    fn from(v: f64) -> StarValue {
        StarValue::Num(v)
    }
}

impl From<i64> for StarValue {
    fn from(v: i64) -> StarValue {
        StarValue::Int(v)
    }
}

/// One data block holding one loop: a table with named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct StarTable {
    /// The block name without `data_`, e.g. `"micrographs"` for `data_micrographs`; may be
    /// empty (`data_`), may not contain whitespace.
    pub block: String,
    /// Column labels without the leading underscore, e.g. `"rlnMicrographName"`.
    pub columns: Vec<String>,
    /// The rows, each with exactly one value per column.
    pub rows: Vec<Vec<StarValue>>,
}

impl StarTable {
    /// The index of the column labelled `name` (without underscore), if there is one.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

/// Everything that can go wrong writing or reading a STAR file; each names the file.
#[derive(Debug)]
pub enum StarError {
    /// An operating-system error creating, writing, reading or renaming.
    Io { path: PathBuf, source: io::Error },
    /// A table [`write_star`] cannot write: `block` names it, `reason` says what is wrong (a row
    /// of the wrong length, a bad column name, a value that cannot be written).
    InvalidTable {
        path: PathBuf,
        block: String,
        reason: String,
    },
    /// Text [`read_star`] cannot parse; `line` counts from 1.
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl fmt::Display for StarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StarError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StarError::InvalidTable {
                path,
                block,
                reason,
            } => write!(
                f,
                "{}: cannot write STAR table data_{block}: {reason}",
                path.display()
            ),
            StarError::Parse { path, line, reason } => {
                write!(f, "{}:{line}: bad STAR file: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for StarError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StarError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Writes `tables` to `path`, one data block with one loop each, in order.
///
/// Every table is checked before anything is written: the block name must not contain
/// whitespace; there must be at least one column; column names must be non-empty, unique,
/// without whitespace and without a leading underscore; every row must have one value per column;
/// strings must not contain a double quote or a control character. A failure is a
/// [`StarError::InvalidTable`] naming the block, and leaves no file. The file is written to a
/// temporary name in the same directory and renamed into place.
pub fn write_star(path: impl AsRef<Path>, tables: &[StarTable]) -> Result<(), StarError> {
    let path = path.as_ref();
    let mut text = String::new();
    for table in tables {
        format_table(table, &mut text).map_err(|reason| StarError::InvalidTable {
            path: path.to_path_buf(),
            block: table.block.clone(),
            reason,
        })?;
    }

    let io_err = |source| StarError::Io {
        path: path.to_path_buf(),
        source,
    };
    write_atomic(path, |w| w.write_all(text.as_bytes())).map_err(io_err)
}

/// Appends one validated table to `out`, or says what is wrong with it.
fn format_table(table: &StarTable, out: &mut String) -> Result<(), String> {
    if table
        .block
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("block name {:?} contains whitespace", table.block));
    }
    if table.columns.is_empty() {
        return Err("no columns".into());
    }
    for (i, c) in table.columns.iter().enumerate() {
        if c.is_empty() {
            return Err(format!("column {} has an empty name", i + 1));
        }
        if c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(format!("column name {c:?} contains whitespace"));
        }
        if c.starts_with('_') {
            return Err(format!(
                "column name {c:?} starts with '_' (give names without the underscore)"
            ));
        }
        if table.columns[..i].contains(c) {
            return Err(format!("column name {c:?} appears twice"));
        }
    }

    out.push_str(VERSION_LINE);
    out.push_str("\n\ndata_");
    out.push_str(&table.block);
    out.push_str("\n\nloop_\n");
    for (i, c) in table.columns.iter().enumerate() {
        out.push_str(&format!("_{c} #{}\n", i + 1));
    }
    for (r, row) in table.rows.iter().enumerate() {
        if row.len() != table.columns.len() {
            return Err(format!(
                "row {} has {} values for {} columns",
                r + 1,
                row.len(),
                table.columns.len()
            ));
        }
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            format_value(v, out)
                .map_err(|why| format!("row {}, column {}: {why}", r + 1, table.columns[i]))?;
        }
        out.push('\n');
    }
    out.push('\n');
    Ok(())
}

/// Appends one value as written in a row, quoted where needed.
fn format_value(v: &StarValue, out: &mut String) -> Result<(), String> {
    match v {
        StarValue::Int(i) => out.push_str(&i.to_string()),
        StarValue::Num(x) => out.push_str(&format_num(*x)),
        StarValue::Str(s) => {
            if s.contains('"') {
                return Err(format!("string {s:?} contains a double quote"));
            }
            if s.chars().any(|c| c.is_control() && c != '\t') {
                return Err(format!("string {s:?} contains a control character"));
            }
            if needs_quotes(s) {
                out.push('"');
                out.push_str(s);
                out.push('"');
            } else {
                out.push_str(s);
            }
        }
    }
    Ok(())
}

/// Whether a string must be quoted to read back as the same string.
fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.chars().any(char::is_whitespace)
        || s.starts_with(['_', '\'', '"'])
        // A comment only where a token starts, by the STAR rules; but pandas-based readers
        // (the `starfile` package) cut a bare value at any '#'.
        || s.contains('#')
        || RESERVED_PREFIXES
            .iter()
            .any(|p| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p))
        || !matches!(parse_bare(s), StarValue::Str(_))
}

/// A real number as written: six decimals with trailing zeros trimmed (one kept), exponent form
/// for magnitudes below 1e-3 or from 1e15, `nan`/`inf`/`-inf` when not finite.
fn format_num(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e15).contains(&a) {
        let s = format!("{x:.6e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        format!("{}e{exponent}", trim_zeros(mantissa))
    } else {
        trim_zeros(&format!("{x:.6}")).to_string()
    }
}

/// `"2.500000"` → `"2.5"`, `"2.000000"` → `"2.0"`.
fn trim_zeros(s: &str) -> &str {
    match s.find('.') {
        Some(dot) => {
            let t = s.trim_end_matches('0');
            if t.len() == dot + 1 { &s[..dot + 2] } else { t }
        }
        None => s,
    }
}

/// The value a bare (unquoted) token stands for.
fn parse_bare(s: &str) -> StarValue {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = s.parse::<i64>()
    {
        return StarValue::Int(i);
    }
    let numeric_chars = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    let starts_ok = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.');
    if numeric_chars
        && starts_ok
        && digits.bytes().any(|b| b.is_ascii_digit())
        && let Ok(x) = s.parse::<f64>()
    {
        return StarValue::Num(x);
    }
    match s.to_ascii_lowercase().as_str() {
        "nan" | "+nan" | "-nan" => StarValue::Num(f64::NAN),
        "inf" | "+inf" | "infinity" | "+infinity" => StarValue::Num(f64::INFINITY),
        "-inf" | "-infinity" => StarValue::Num(f64::NEG_INFINITY),
        _ => StarValue::Str(s.to_string()),
    }
}

/// One token of a line: its text and whether it was quoted.
#[derive(Debug, PartialEq)]
struct Token<'a> {
    text: &'a str,
    quoted: bool,
}

/// Splits a line into tokens at whitespace; a token starting with `"` or `'` runs to the next
/// same quote; an unquoted token starting with `#` starts a comment that ends the line.
fn tokenize(line: &str) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start();
        let Some(first) = rest.chars().next() else {
            break;
        };
        if first == '#' {
            break;
        }
        if first == '"' || first == '\'' {
            let body = &rest[1..];
            let Some(end) = body.find(first) else {
                return Err(format!("unterminated {first}-quoted value"));
            };
            tokens.push(Token {
                text: &body[..end],
                quoted: true,
            });
            rest = &body[end + 1..];
            if rest.starts_with(|c: char| !c.is_whitespace()) {
                return Err(format!(
                    "text {:?} right after a closing quote",
                    rest.split_whitespace().next().unwrap_or("")
                ));
            }
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            tokens.push(Token {
                text: &rest[..end],
                quoted: false,
            });
            rest = &rest[end..];
        }
    }
    Ok(tokens)
}

/// Where the parser stands inside the current data block.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Before the first `data_`.
    Outside,
    /// After `data_`, waiting for `loop_`.
    Block,
    /// After `loop_`, reading column labels (or the first row).
    Columns,
    /// Reading rows.
    Rows,
}

/// Reads every data block of a STAR file, each holding one `loop_`, in file order.
///
/// See the module documentation for the syntax accepted and how bare values are typed. Errors
/// give the line: a row with the wrong number of values, a data block without a loop or with
/// a second loop, key-value pairs, an unterminated quote.
pub fn read_star(path: impl AsRef<Path>) -> Result<Vec<StarTable>, StarError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| StarError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|(line, reason)| StarError::Parse {
        path: path.to_path_buf(),
        line,
        reason,
    })
}

/// Parses a whole file; errors are `(line, reason)`, lines counted from 1.
fn parse(text: &str) -> Result<Vec<StarTable>, (usize, String)> {
    let mut tables: Vec<StarTable> = Vec::new();
    let mut state = State::Outside;
    let mut block_line = 0;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let tokens = tokenize(line).map_err(|e| (n, e))?;
        let Some(first) = tokens.first() else {
            continue;
        };
        let keyword = |k: &str| !first.quoted && first.text.eq_ignore_ascii_case(k);
        let lower = first.text.to_ascii_lowercase();

        if !first.quoted && lower.starts_with("data_") {
            if unfinished(&tables, state) {
                return Err((block_line, NO_LOOP.into()));
            }
            if tokens.len() > 1 {
                return Err((n, "text after the data_ block name".into()));
            }
            tables.push(StarTable {
                block: first.text[5..].to_string(),
                columns: Vec::new(),
                rows: Vec::new(),
            });
            state = State::Block;
            block_line = n;
            continue;
        }
        let Some(table) = tables.last_mut() else {
            return Err((n, format!("{:?} before the first data_ block", first.text)));
        };
        if keyword("loop_") {
            if state != State::Block {
                return Err((n, "second loop_ in one data block (not supported)".into()));
            }
            if tokens.len() > 1 {
                return Err((n, "text after loop_".into()));
            }
            state = State::Columns;
            continue;
        }
        if !first.quoted && first.text.starts_with('_') {
            match state {
                State::Columns => {
                    let name = &first.text[1..];
                    if name.is_empty() {
                        return Err((n, "empty column label".into()));
                    }
                    if tokens.len() > 1 {
                        return Err((n, format!("text after column label {}", first.text)));
                    }
                    if table.columns.iter().any(|c| c == name) {
                        return Err((n, format!("column {} appears twice", first.text)));
                    }
                    table.columns.push(name.to_string());
                }
                State::Rows => {
                    return Err((n, format!("column label {} after the rows", first.text)));
                }
                _ => {
                    return Err((
                        n,
                        format!(
                            "key-value pair {} outside a loop_ (not supported)",
                            first.text
                        ),
                    ));
                }
            }
            continue;
        }
        match state {
            State::Columns if !table.columns.is_empty() => state = State::Rows,
            State::Rows => {}
            _ => return Err((n, format!("unexpected {:?}", first.text))),
        }
        if tokens.len() != table.columns.len() {
            return Err((
                n,
                format!(
                    "row has {} values for {} columns",
                    tokens.len(),
                    table.columns.len()
                ),
            ));
        }
        table.rows.push(
            tokens
                .iter()
                .map(|t| {
                    if t.quoted {
                        StarValue::Str(t.text.to_string())
                    } else {
                        parse_bare(t.text)
                    }
                })
                .collect(),
        );
    }
    if unfinished(&tables, state) {
        return Err((block_line, NO_LOOP.into()));
    }
    Ok(tables)
}

/// The error for a data block that ends before its loop has a column.
const NO_LOOP: &str = "data block without a loop_ table, or whose loop_ has no columns";

/// Whether the current block ends before its loop has a column: no `loop_`, or `loop_` with no
/// column labels. (A loop with columns and no rows is a valid empty table.)
fn unfinished(tables: &[StarTable], state: State) -> bool {
    match state {
        State::Block => true,
        State::Columns => tables.last().is_some_and(|t| t.columns.is_empty()),
        State::Outside | State::Rows => false,
    }
}

#[cfg(test)]
#[path = "star_tests.rs"]
mod tests;
