//! Reading a `multipart/byteranges` body (RFC 9110 14.6, RFC 2046 5.1):
//! the answer to a request for several byte ranges at once. Each part is
//! handed to the caller with the range its own `Content-Range` names,
//! whatever order or grouping the server chose (RFC 9110 lets it reorder,
//! merge or drop ranges: lighttpd answers at most 10, Go's `ServeContent`
//! all of them, overlaps included), so the caller decides what is covered.

use std::io::{self, BufRead, Read};

/// Longest line accepted in the multipart framing (part headers,
/// delimiters): a server sending more is not speaking multipart.
const MAX_LINE: u64 = 8 * 1024;
/// Most header lines accepted per part.
const MAX_HEADERS: usize = 32;

/// Why a multipart body could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartsError {
    /// The body ended or broke off early (a connection problem: worth
    /// another request for what is still missing).
    Truncated(String),
    /// The framing is not multipart/byteranges as the RFCs define it.
    Malformed(String),
}

/// The boundary of a `Content-Type: multipart/byteranges; boundary=...`
/// value, or `None` for any other content type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        // RFC 2046: 1 to 70 characters.
        (!value.is_empty() && value.len() <= 70).then(|| value.to_owned())
    })
}

/// Reads every part of `body` (framed by `boundary`): `on_part(start, len,
/// bytes)` gets each part's range, from its `Content-Range`, and a reader
/// of exactly its `len` bytes, and returns `Ok(true)` to keep the part;
/// the part is reported by `kept(start, len)` only once the delimiter
/// after it was read (its length is then right). A part's total must be
/// `total` when that is known.
pub(crate) fn read_parts(
    body: &mut dyn BufRead,
    boundary: &str,
    total: Option<u64>,
    on_part: &mut dyn FnMut(u64, u64, &mut dyn Read) -> io::Result<()>,
    kept: &mut dyn FnMut(u64, u64),
) -> Result<(), PartsError> {
    let delimiter = format!("--{boundary}");
    // The preamble, if any, up to the first delimiter.
    loop {
        let line = read_line(body)?;
        if line == delimiter {
            break;
        }
        if line == format!("{delimiter}--") {
            return Ok(());
        }
    }
    loop {
        let mut range = None;
        for n in 0.. {
            let line = read_line(body)?;
            if line.is_empty() {
                break;
            }
            if n >= MAX_HEADERS {
                return Err(PartsError::Malformed("too many part header lines".into()));
            }
            let (name, value) = line.split_once(':').ok_or_else(|| {
                PartsError::Malformed(format!("part header without a colon: {line:?}"))
            })?;
            if name.trim().eq_ignore_ascii_case("content-range") {
                range = Some(parse_range(value, total)?);
            }
        }
        let (start, end) =
            range.ok_or_else(|| PartsError::Malformed("a part without Content-Range".into()))?;
        let len = end - start + 1;
        let mut part = body.take(len);
        on_part(start, len, &mut part).map_err(|e| truncated(&e))?;
        // Whatever the caller left of the part.
        io::copy(&mut part, &mut io::sink()).map_err(|e| truncated(&e))?;
        if part.limit() > 0 {
            return Err(PartsError::Truncated(format!(
                "the body ended inside the part for bytes {start}-{end}"
            )));
        }
        // The part's bytes end with CRLF, then the delimiter.
        let line = read_line(body)?;
        let line = if line.is_empty() {
            read_line(body)?
        } else {
            line
        };
        if line == delimiter {
            kept(start, len);
        } else if line == format!("{delimiter}--") {
            kept(start, len);
            return Ok(());
        } else {
            return Err(PartsError::Malformed(format!(
                "the part for bytes {start}-{end} is not followed by the boundary \
                 (its length is not what Content-Range says)"
            )));
        }
    }
}

/// `bytes START-END/TOTAL` of a part; END inclusive.
fn parse_range(value: &str, total: Option<u64>) -> Result<(u64, u64), PartsError> {
    let bad = || PartsError::Malformed(format!("unreadable part Content-Range {value:?}"));
    let rest = value.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, size) = rest.trim().split_once('/').ok_or_else(bad)?;
    let (start, end) = range.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    let size = match size.trim() {
        "*" => None,
        digits => Some(digits.parse::<u64>().map_err(|_| bad())?),
    };
    if let Some(size) = size.or(total)
        && end >= size
    {
        return Err(bad());
    }
    if let (Some(size), Some(total)) = (size, total)
        && size != total
    {
        return Err(PartsError::Malformed(format!(
            "a part of a file of {size} bytes, not {total}"
        )));
    }
    Ok((start, end))
}

/// A range still wanted: `len` bytes of the file at `start`, going to
/// `out_at` in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub start: u64,
    pub len: u64,
    pub out_at: usize,
}

impl Piece {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Copies the bytes of a part (`len` bytes of the file at `start`, read
/// from `part`) into `out` wherever `pieces` (sorted, disjoint) want them.
pub(crate) fn scatter(
    pieces: &[Piece],
    start: u64,
    len: u64,
    part: &mut dyn Read,
    out: &mut [u8],
) -> io::Result<()> {
    let end = start + len;
    let mut at = start;
    let first = pieces.partition_point(|p| p.end() <= start);
    for p in &pieces[first..] {
        if p.start >= end {
            break;
        }
        let (lo, hi) = (p.start.max(at), p.end().min(end));
        io::copy(&mut part.take(lo - at), &mut io::sink())?;
        let o = p.out_at + (lo - p.start) as usize;
        part.read_exact(&mut out[o..o + (hi - lo) as usize])?;
        at = hi;
    }
    Ok(())
}

/// What of `pieces` (sorted, disjoint) the `covered` ranges (start, len;
/// any order, overlaps allowed) leave uncovered, in order.
pub(crate) fn uncovered(pieces: &[Piece], covered: &mut [(u64, u64)]) -> Vec<Piece> {
    covered.sort_unstable();
    let mut left = Vec::new();
    for p in pieces {
        let mut at = p.start;
        for &(start, len) in covered.iter() {
            let end = start + len;
            if end <= at || len == 0 {
                continue;
            }
            if start >= p.end() {
                break;
            }
            if start > at {
                left.push(Piece {
                    start: at,
                    len: start - at,
                    out_at: p.out_at + (at - p.start) as usize,
                });
            }
            at = at.max(end);
            if at >= p.end() {
                break;
            }
        }
        if at < p.end() {
            left.push(Piece {
                start: at,
                len: p.end() - at,
                out_at: p.out_at + (at - p.start) as usize,
            });
        }
    }
    left
}

/// One line without its CRLF (or LF).
fn read_line(body: &mut dyn BufRead) -> Result<String, PartsError> {
    let mut line = Vec::new();
    body.take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .map_err(|e| truncated(&e))?;
    if line.last() != Some(&b'\n') {
        return Err(if line.len() as u64 >= MAX_LINE {
            PartsError::Malformed("a line of the multipart framing is too long".into())
        } else {
            PartsError::Truncated("the body ended before the closing boundary".into())
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map_err(|_| PartsError::Malformed("the multipart framing is not text".into()))
}

fn truncated(e: &io::Error) -> PartsError {
    PartsError::Truncated(format!("the body broke off: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(u64, &[u8])], total: u64) -> Vec<u8> {
        let mut out = b"preamble\r\n".to_vec();
        for (start, bytes) in parts {
            out.extend_from_slice(b"--XyZ\r\nContent-Type: application/octet-stream\r\n");
            out.extend_from_slice(
                format!(
                    "Content-Range: bytes {start}-{}/{total}\r\n\r\n",
                    start + bytes.len() as u64 - 1
                )
                .as_bytes(),
            );
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        out
    }

    /// A part's start and bytes.
    type Part = (u64, Vec<u8>);

    /// (kept parts with their bytes, result)
    fn parse(data: &[u8], total: Option<u64>) -> (Vec<Part>, Result<(), PartsError>) {
        let mut seen = Vec::new();
        let mut kept = Vec::new();
        let result = read_parts(
            &mut &data[..],
            "XyZ",
            total,
            &mut |start, len, r| {
                let mut v = vec![0; len as usize];
                r.read_exact(&mut v)?;
                seen.push((start, v));
                Ok(())
            },
            &mut |start, _| kept.push(start),
        );
        let out = seen.into_iter().filter(|(s, _)| kept.contains(s)).collect();
        (out, result)
    }

    #[test]
    fn scatter_and_uncovered_follow_the_parts_not_the_request() {
        let pieces = [
            Piece {
                start: 10,
                len: 5,
                out_at: 0,
            },
            Piece {
                start: 20,
                len: 5,
                out_at: 5,
            },
            Piece {
                start: 40,
                len: 10,
                out_at: 10,
            },
        ];
        let file: Vec<u8> = (0..100u8).collect();
        let mut out = vec![0u8; 20];
        // One part across the first two pieces and the gap between them,
        // one inside the third.
        for (start, len) in [(8u64, 20u64), (42, 3)] {
            let mut part = &file[start as usize..(start + len) as usize];
            scatter(&pieces, start, len, &mut part, &mut out).unwrap();
        }
        assert_eq!(&out[..10], &[10, 11, 12, 13, 14, 20, 21, 22, 23, 24]);
        assert_eq!(&out[12..15], &[42, 43, 44]);
        let left = uncovered(&pieces, &mut [(42, 3), (8, 20)]);
        assert_eq!(
            left,
            vec![
                Piece {
                    start: 40,
                    len: 2,
                    out_at: 10
                },
                Piece {
                    start: 45,
                    len: 5,
                    out_at: 15
                }
            ]
        );
        assert_eq!(uncovered(&pieces, &mut [(0, 100)]), vec![]);
        assert_eq!(uncovered(&pieces, &mut []), pieces.to_vec());
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(
            boundary("multipart/byteranges; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary("Multipart/ByteRanges;charset=x; Boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("application/octet-stream"), None);
        assert_eq!(boundary("multipart/byteranges"), None);
        assert_eq!(boundary("multipart/byteranges; boundary="), None);
    }

    #[test]
    fn parts_come_in_any_order_with_their_own_ranges() {
        let data = body(&[(100, b"hello"), (0, b"ab"), (3, b"xyz")], 1000);
        let (parts, result) = parse(&data, Some(1000));
        result.unwrap();
        assert_eq!(
            parts,
            vec![
                (100, b"hello".to_vec()),
                (0, b"ab".to_vec()),
                (3, b"xyz".to_vec())
            ]
        );
    }

    #[test]
    fn a_truncated_body_keeps_the_parts_before_the_cut() {
        let data = body(&[(0, b"abcd"), (10, b"efgh")], 100);
        for cut in [data.len() - 3, data.len() - 12, 60] {
            let (parts, result) = parse(&data[..cut], Some(100));
            assert!(
                matches!(result, Err(PartsError::Truncated(_))),
                "{cut}: {result:?}"
            );
            assert!(parts.len() <= 1, "{cut}: {parts:?}");
        }
    }

    #[test]
    fn a_part_longer_or_shorter_than_its_range_is_malformed_and_not_kept() {
        let mut data = body(&[(0, b"abcd"), (10, b"efgh")], 100);
        // The second part's body gets one more byte than its range says.
        let at = data.windows(4).position(|w| w == b"efgh").unwrap();
        data.insert(at, b'!');
        let (parts, result) = parse(&data, Some(100));
        assert!(
            matches!(result, Err(PartsError::Malformed(_))),
            "{result:?}"
        );
        assert_eq!(parts, vec![(0, b"abcd".to_vec())]);
    }

    #[test]
    fn bad_ranges_and_other_files_are_malformed() {
        for range in [
            "bytes 5-2/100",
            "bytes 0-100/100",
            "bytes 0-1/99",
            "items 0-1/100",
            "bytes a-b/100",
        ] {
            let data = format!("--XyZ\r\nContent-Range: {range}\r\n\r\nab\r\n--XyZ--\r\n");
            let (_, result) = parse(data.as_bytes(), Some(100));
            assert!(
                matches!(result, Err(PartsError::Malformed(_))),
                "{range}: {result:?}"
            );
        }
        let data = b"--XyZ\r\nContent-Type: x\r\n\r\nab\r\n--XyZ--\r\n";
        assert!(matches!(
            parse(data, Some(100)).1,
            Err(PartsError::Malformed(_))
        ));
        let long = vec![b'a'; 10_000];
        assert!(matches!(
            parse(&long, None).1,
            Err(PartsError::Malformed(_))
        ));
    }
}
