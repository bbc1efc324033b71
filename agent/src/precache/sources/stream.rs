//! Layer stream helpers shared by [`super::release`] and [`super::catalog`]: compression
//! detection by magic bytes (gzip, zstd, or a plain tar) and tar path normalization.

use std::io::{self, Chain, Cursor, Read, Take};
use std::path::Path;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

type Peeked<R> = Chain<Take<Cursor<[u8; 4]>>, R>;

/// A layer blob, decompressed on the fly according to its first bytes.
pub(crate) enum Decompressed<R: Read> {
    Plain(Peeked<R>),
    Gzip(Box<flate2::read::MultiGzDecoder<Peeked<R>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, io::BufReader<Peeked<R>>>>),
}

impl<R: Read> Read for Decompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressed::Plain(r) => r.read(buf),
            Decompressed::Gzip(r) => r.read(buf),
            Decompressed::Zstd(r) => r.read(buf),
        }
    }
}

/// Reads the first bytes of `layer` (without losing them) and wraps it in the matching decoder:
/// gzip (`1f 8b`), zstd (`28 b5 2f fd`), otherwise a plain tar.
pub(crate) fn decompress<R: Read>(mut layer: R) -> io::Result<Decompressed<R>> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match layer.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let is_gzip = n >= 2 && head[..2] == GZIP_MAGIC;
    let is_zstd = n >= 4 && head == ZSTD_MAGIC;
    let peeked = Cursor::new(head).take(n as u64).chain(layer);
    Ok(if is_gzip {
        Decompressed::Gzip(Box::new(flate2::read::MultiGzDecoder::new(peeked)))
    } else if is_zstd {
        Decompressed::Zstd(Box::new(zstd::stream::read::Decoder::new(peeked)?))
    } else {
        Decompressed::Plain(peeked)
    })
}

/// A tar entry path as `a/b/c`: no leading `/` or `./`, no `.` components, no trailing `/`.
/// `None` for paths that climb out of the root (`..`), which no image layer should hold.
pub(crate) fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            std::path::Component::CurDir | std::path::Component::RootDir => {}
            std::path::Component::ParentDir | std::path::Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// A directory given as `/configs`, `configs/` or `./configs` → `configs` (`""` for the root).
pub(crate) fn normalize_dir(dir: &str) -> String {
    normalize(Path::new(dir)).unwrap_or_default()
}

/// True when `path` is `dir` itself or lies under it (`dir` normalized; `""` is the root).
pub(crate) fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path == dir
        || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// Layer builders for the tests of this directory.
#[cfg(test)]
pub(crate) mod testutil {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::io::Write;

    /// A tar layer being built in memory.
    pub(crate) struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        pub(crate) fn new() -> Self {
            Layer(tar::Builder::new(Vec::new()))
        }

        pub(crate) fn file(mut self, path: &str, data: &[u8]) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }

        pub(crate) fn dir(mut self, path: &str) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Directory);
            self.0.append_data(&mut h, path, &[][..]).unwrap();
            self
        }

        pub(crate) fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o777);
            h.set_entry_type(tar::EntryType::Symlink);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }

        pub(crate) fn tar(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }

        pub(crate) fn gzip(self) -> Vec<u8> {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&self.tar()).unwrap();
            gz.finish().unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Write;

    #[test]
    fn detects_gzip_zstd_and_plain_and_keeps_every_byte() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::stream::encode_all(&data[..], 1).unwrap();
        for (name, blob) in [("plain", data.clone()), ("gzip", gz), ("zstd", zs)] {
            let mut out = Vec::new();
            let mut d = decompress(&blob[..]).unwrap();
            assert!(
                matches!(
                    (&d, name),
                    (Decompressed::Plain(_), "plain")
                        | (Decompressed::Gzip(_), "gzip")
                        | (Decompressed::Zstd(_), "zstd")
                ),
                "{name}"
            );
            d.read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{name}");
        }
        // Shorter than the magic: still read back intact.
        let mut out = Vec::new();
        decompress(&b"\x1f"[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"\x1f");
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize(Path::new("./configs/a/")).unwrap(), "configs/a");
        assert_eq!(
            normalize(Path::new("/configs//a/./b")).unwrap(),
            "configs/a/b"
        );
        assert_eq!(normalize(Path::new("../etc")), None);
        assert_eq!(normalize_dir("/configs/"), "configs");
        assert_eq!(normalize_dir("/"), "");
        assert!(is_under("configs/a", "configs"));
        assert!(is_under("configs", "configs"));
        assert!(!is_under("configs2/a", "configs"));
        assert!(is_under("anything", ""));
    }
}
