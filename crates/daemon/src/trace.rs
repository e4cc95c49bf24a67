//! Logging: tracing-subscriber, level from `KPROXY_LOG` then `RUST_LOG`
//! (default `info`), text or JSON lines on standard error.
//!
//! Log fields carry user-controlled text (object names, fields, errors
//! quoting input). In the text format every control character of a field
//! or message is escaped (`\n`, `\u{1b}`), so that one event is always
//! one line and a crafted name can neither forge log lines nor send
//! terminal escapes; JSON escapes them by itself.

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

use crate::cli::LogFormat;

/// Install the global subscriber. Calling it twice is harmless (the second
/// call is ignored), which keeps tests simple.
pub fn init(format: LogFormat) {
    let filter = std::env::var("KPROXY_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "info".to_string());
    let mut filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("kproxy: ignoring invalid log filter {filter:?}: {e}");
        EnvFilter::new("info")
    });
    // kube-runtime's watcher warns about every 403 itself; the kube source
    // logs each watcher error once, at a level that knows a just-started
    // API server's transient 403s. A filter that names kube_runtime wins.
    if !filter.to_string().contains("kube_runtime")
        && let Ok(quiet) = "kube_runtime::watcher=error".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(EscapedFields).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `s` with every control character escaped as Rust escapes it (`\n`,
/// `\t`, `\u{1b}`); everything else as is.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The text format's fields, like tracing-subscriber's default
/// (`message name=value ...`, strings quoted), with control characters
/// escaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_, '_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // `log` crate metadata, which the default formatter skips too.
        if name.starts_with("log.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let value = escape_controls(value);
        self.result = if name == "message" {
            write!(self.writer, "{sep}{value}")
        } else {
            write!(self.writer, "{sep}{name}={value}")
        };
    }
}

impl Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Quoted, as the default formatter does (its Debug escapes
        // control characters already).
        self.write(field, &format!("{value:?}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn control_characters_in_fields_and_messages_are_escaped() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        let name = "ns/evil\n2026-01-01T00:00:00Z  INFO forged\x1b[31m";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("sync", object = %name);
            let _e = span.enter();
            tracing::warn!(object = %name, field = "spec\r\nx", count = 3,
                "skipped {}", name);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "one event, one line: {text:?}");
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        assert!(
            text.contains(r"object=ns/evil\n2026-01-01T00:00:00Z  INFO forged\u{1b}[31m"),
            "{text}"
        );
        assert!(text.contains(r#"field="spec\r\nx""#), "{text}");
        assert!(text.contains("count=3"), "{text}");
        assert!(
            text.contains(r"skipped ns/evil\n2026-01-01T00:00:00Z"),
            "{text}"
        );
    }
}
