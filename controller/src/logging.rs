//! Log output: one event, one line. Tenant-written strings (resource names, URLs, messages from
//! a manifest or a registry) reach log fields; a newline or carriage return in one would forge
//! a line an operator or a log shipper reads as the controller's. The text format writes each
//! event with one `write`, so the writer escapes every control character but the event's final
//! newline (tracing-subscriber already escapes ANSI sequences inside fields; its own colours
//! pass through). The JSON format escapes by construction.

use std::io::{self, Write};

/// Wraps a writer; see the module docs.
pub struct OneLine<W>(pub W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len() + 8);
        let last = buf.len().saturating_sub(1);
        for (i, &b) in buf.iter().enumerate() {
            match b {
                b'\n' if i == last => out.push(b),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                // Tab is harmless; ESC starts the formatter's own colours.
                b'\t' | 0x1b => out.push(b),
                0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                _ => out.push(b),
            }
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Standard error, one event per line.
pub fn stderr() -> OneLine<io::Stderr> {
    OneLine(io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn control_characters_are_escaped_and_the_line_end_kept() {
        let mut w = OneLine(Vec::new());
        w.write_all(b"a\nb\r\x07c\td\x7f\n").expect("write");
        assert_eq!(w.0, b"a\\nb\\r\\x07c\td\\x7f\n");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_tenant_string_cannot_forge_a_log_line() {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || OneLine(sink.clone()))
            .finish();
        let forged = "evil\n2026-12-07T00:00:00Z  INFO portcullis: admin login ok";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(name = %forged, "manifest not loaded: {forged}");
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("evil\\n2026"), "{text}");
    }
}
