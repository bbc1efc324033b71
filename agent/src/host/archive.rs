//! Archives of host directories: tar (GNU format, so long names and sparse files work) with
//! optional gzip or zstd, keeping owners, modes, mtimes, xattrs (SELinux labels included),
//! symlinks, hard links and holes; and a **safe restore** that never writes outside its target.
//!
//! Writing streams: memory does not grow with the data (one copy buffer, the compressor's
//! window, and the inode table of multiply-linked files). The archive's size and sha256 are
//! computed on the way to disk, for the backup manifest.
//!
//! Restoring checks the whole archive first ([`check`], a complete dry run that reads every
//! byte), then extracts: absolute names, `..`, hard links to outside the archive, symlinks that
//! resolve outside the jail, writes through symlinks (in the archive, or on disk below the
//! target, see [`check_dir_beneath`]), and truncated or damaged archives are refused before
//! anything is written. An archive of host paths restored at the host root
//! ([`RestoreOptions::host_paths`]) is the exception on disk: the directories on the way to
//! each entry are resolved inside the root as the host resolves them ([`resolve_in_root`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use ring::digest;

use super::root::{InRootError, check_dir_beneath, resolve_in_root};
use talm_shared::hex;

/// Compression of an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip at this level (what `tar czf` produces, at level 6).
    Gzip(u32),
    /// zstd at this level (the default: 3).
    #[default]
    Zstd3,
}

impl Compression {
    /// The file name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => ".tar",
            Compression::Gzip(_) => ".tar.gz",
            Compression::Zstd3 => ".tar.zst",
        }
    }
}

/// Why archiving or restoring failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The archive holds an entry a safe restore refuses.
    #[error("refusing archive {archive}: entry {entry:?}: {reason}")]
    Unsafe {
        /// The archive.
        archive: PathBuf,
        /// The entry name.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The archive is truncated or damaged (it cannot be read to its end-of-archive marker).
    #[error("archive {archive} is damaged: {reason}")]
    Damaged {
        /// The archive.
        archive: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The restore would write or delete through something on disk that is not a real
    /// directory (a symlink, a file): the target or a directory on the way to an entry; or,
    /// for host paths, a directory on the way that does not resolve inside the jail.
    #[error("refusing to restore {archive} into {dest}: {source}")]
    OnDisk {
        /// The archive.
        archive: PathBuf,
        /// The restore target.
        dest: PathBuf,
        /// What stands in the way.
        #[source]
        source: Box<InRootError>,
    },
    /// The work was stopped (deadline or abort).
    #[error("stopped: {0}")]
    Stopped(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| {
        if source.get_ref().is_some_and(|e| e.is::<Stop>()) {
            ArchiveError::Stopped(source.to_string())
        } else {
            ArchiveError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// The error a [`Tick`] returns to stop an archive (a deadline). Not `Interrupted`: the standard
/// library retries those.
#[derive(Debug)]
pub struct Stop(pub String);

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl Stop {
    /// An `io::Error` carrying a `Stop`.
    pub fn error(why: &str) -> io::Error {
        io::Error::other(Stop(why.to_owned()))
    }
}

/// Counts and hashes the bytes on their way to the file.
struct HashWriter<W> {
    inner: W,
    ctx: digest::Context,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Base = HashWriter<BufWriter<File>>;

enum Sink {
    Plain(Base),
    Gzip(flate2::write::GzEncoder<Base>),
    Zstd(zstd::stream::write::Encoder<'static, Base>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

impl Sink {
    fn finish(self) -> io::Result<Base> {
        match self {
            Sink::Plain(w) => Ok(w),
            Sink::Gzip(w) => w.finish(),
            Sink::Zstd(w) => w.finish(),
        }
    }
}

/// A finished file: its size and sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    /// Bytes on disk.
    pub size: u64,
    /// sha256, lower-case hex.
    pub sha256: String,
}

/// Called with the number of source bytes consumed; an error stops the work (return
/// [`Stop::error`] to have it reported as [`ArchiveError::Stopped`]).
pub type Tick<'a> = &'a (dyn Fn(u64) -> io::Result<()> + Sync);

/// Passes reads through, ticking.
struct TickReader<'a, R> {
    inner: R,
    tick: Tick<'a>,
}

impl<R: Read> Read for TickReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.tick)(n as u64)?;
        Ok(n)
    }
}

/// Writes an archive.
pub struct ArchiveWriter<'a> {
    path: PathBuf,
    builder: tar::Builder<Sink>,
    links: HashMap<(u64, u64), PathBuf>,
    tick: Tick<'a>,
    /// Files that changed size while being read (archived at their size when listed).
    pub changed: Vec<PathBuf>,
    /// Sockets and other entries that cannot be archived (skipped).
    pub skipped: Vec<PathBuf>,
    /// Entries written so far (files, directories, links, special files; not PAX headers).
    pub entries: u64,
    /// Bytes of file data written so far (hard links count nothing).
    pub bytes: u64,
}

impl std::fmt::Debug for ArchiveWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Encodes one PAX record: `"<len> <key>=<value>\n"`, where len counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = Vec::with_capacity(len);
    rec.extend_from_slice(len.to_string().as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(key.as_bytes());
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// The xattrs of a path (not following symlinks), as PAX `SCHILY.xattr.*` records.
fn xattr_records(path: &Path) -> Vec<u8> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name_str) = std::str::from_utf8(name) else {
            continue;
        };
        let mut value = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(path, name_str, &mut value[..]) {
            out.extend(pax_record(
                &format!("SCHILY.xattr.{name_str}"),
                &value[..len],
            ));
        }
    }
    out
}

impl<'a> ArchiveWriter<'a> {
    /// Creates `path` (truncating it) with this compression.
    pub fn create(
        path: &Path,
        compression: Compression,
        tick: Tick<'a>,
    ) -> Result<Self, ArchiveError> {
        let file = File::create(path).map_err(io_at(path))?;
        let base = HashWriter {
            inner: BufWriter::with_capacity(256 * 1024, file),
            ctx: digest::Context::new(&digest::SHA256),
            len: 0,
        };
        let sink = match compression {
            Compression::None => Sink::Plain(base),
            Compression::Gzip(level) => Sink::Gzip(flate2::write::GzEncoder::new(
                base,
                flate2::Compression::new(level),
            )),
            Compression::Zstd3 => {
                Sink::Zstd(zstd::stream::write::Encoder::new(base, 3).map_err(io_at(path))?)
            }
        };
        let mut builder = tar::Builder::new(sink);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Complete);
        Ok(Self {
            path: path.to_owned(),
            builder,
            links: HashMap::new(),
            tick,
            changed: Vec::new(),
            skipped: Vec::new(),
            entries: 0,
            bytes: 0,
        })
    }

    /// Adds the tree at `src` under the name `prefix` (empty: at the archive's top level).
    /// `exclude` gets each path relative to `src` and leaves it (and what is below) out.
    /// Entries are sorted by name, so the same tree gives the same archive.
    pub fn add_tree(
        &mut self,
        src: &Path,
        prefix: &Path,
        exclude: &dyn Fn(&Path) -> bool,
    ) -> Result<(), ArchiveError> {
        if !prefix.as_os_str().is_empty() {
            self.add_one(src, prefix)?;
        }
        let meta = fs::symlink_metadata(src).map_err(io_at(src))?;
        if meta.is_dir() {
            self.walk(src, Path::new(""), prefix, exclude)?;
        }
        Ok(())
    }

    fn walk(
        &mut self,
        dir: &Path,
        rel: &Path,
        prefix: &Path,
        exclude: &dyn Fn(&Path) -> bool,
    ) -> Result<(), ArchiveError> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(io_at(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_at(dir))?;
        names.sort();
        for name in names {
            let rel_child = rel.join(&name);
            if exclude(&rel_child) {
                continue;
            }
            let src = dir.join(&name);
            let is_dir = match fs::symlink_metadata(&src) {
                Ok(m) => m.is_dir(),
                // Gone since listed (a live system): skip it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_at(&src)(e)),
            };
            self.add_one(&src, &prefix.join(&rel_child))?;
            if is_dir {
                self.walk(&src, &rel_child, prefix, exclude)?;
            }
        }
        Ok(())
    }

    /// Adds one filesystem object (not its children) under `name`.
    pub fn add_one(&mut self, src: &Path, name: &Path) -> Result<(), ArchiveError> {
        let meta = match fs::symlink_metadata(src) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_at(src)(e)),
        };
        let ft = meta.file_type();
        if ft.is_socket() {
            self.skipped.push(src.to_owned());
            return Ok(());
        }
        let pax = if ft.is_symlink() {
            Vec::new()
        } else {
            xattr_records(src)
        };
        if !pax.is_empty() {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_path("PaxHeaders/xattrs").map_err(io_at(src))?;
            h.set_size(pax.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            self.builder
                .append(&h, pax.as_slice())
                .map_err(io_at(&self.path))?;
        }
        if ft.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                let first = first.clone();
                self.builder
                    .append_link(&mut h, name, &first)
                    .map_err(io_at(&self.path))?;
                self.entries += 1;
                return Ok(());
            }
            self.links.insert(key, name.to_owned());
        }
        if ft.is_file() && meta.blocks().saturating_mul(512) < meta.len() {
            // Holes: tar's sparse support (SEEK_DATA/SEEK_HOLE) stores the data only.
            let mut f = File::open(src).map_err(io_at(src))?;
            self.builder
                .append_file(name, &mut f)
                .map_err(io_at(&self.path))?;
            self.bytes += meta.len();
            (self.tick)(meta.len()).map_err(io_at(src))?;
        } else if ft.is_file() {
            let f = match File::open(src) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_at(src)(e)),
            };
            let len = meta.len();
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            // Exactly `len` bytes whatever happens to the file meanwhile: zeros if it shrank.
            let counted = std::cell::Cell::new(0u64);
            let reader = TickReader {
                inner: BufReader::with_capacity(256 * 1024, f.take(len)),
                tick: self.tick,
            };
            let counting = CountingReader {
                inner: reader,
                n: &counted,
            };
            let pad = io::repeat(0).take(len);
            let data = counting.chain(pad).take(len);
            self.builder
                .append_data(&mut h, name, data)
                .map_err(io_at(&self.path))?;
            if counted.get() != len {
                self.changed.push(src.to_owned());
            }
            self.bytes += len;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            h.set_entry_type(if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let rdev = meta.rdev();
            let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
            let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
            h.set_device_major(u32::try_from(major).unwrap_or(0))
                .map_err(io_at(src))?;
            h.set_device_minor(u32::try_from(minor).unwrap_or(0))
                .map_err(io_at(src))?;
            h.set_size(0);
            self.builder
                .append_data(&mut h, name, io::empty())
                .map_err(io_at(&self.path))?;
        } else {
            // Directories and symlinks.
            self.builder
                .append_path_with_name(src, name)
                .map_err(io_at(src))?;
        }
        self.entries += 1;
        Ok(())
    }

    /// Finishes the archive, fsyncs it, and returns its size and sha256.
    pub fn finish(self) -> Result<FileDigest, ArchiveError> {
        let path = self.path;
        let sink = self.builder.into_inner().map_err(io_at(&path))?;
        let mut base = sink.finish().map_err(io_at(&path))?;
        base.flush().map_err(io_at(&path))?;
        let file = base
            .inner
            .into_inner()
            .map_err(|e| io_at(&path)(e.into_error()))?;
        file.sync_all().map_err(io_at(&path))?;
        Ok(FileDigest {
            size: base.len,
            sha256: hex::encode(base.ctx.finish().as_ref()),
        })
    }
}

struct CountingReader<'c, R> {
    inner: R,
    n: &'c std::cell::Cell<u64>,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.set(self.n.get() + k as u64);
        Ok(k)
    }
}

/// sha256 and size of a file.
pub fn digest_file(path: &Path) -> io::Result<FileDigest> {
    let mut f = File::open(path)?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileDigest {
        size,
        sha256: hex::encode(ctx.finish().as_ref()),
    })
}

/// Opens an archive whatever its compression (detected from the magic bytes).
fn open_reader(path: &Path) -> Result<Box<dyn Read>, ArchiveError> {
    let mut f = BufReader::with_capacity(256 * 1024, File::open(path).map_err(io_at(path))?);
    let mut magic = [0u8; 4];
    let n = {
        let buf = io::BufRead::fill_buf(&mut f).map_err(io_at(path))?;
        let n = buf.len().min(4);
        magic[..n].copy_from_slice(&buf[..n]);
        n
    };
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(f))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::with_buffer(f).map_err(io_at(path))?)
    } else {
        Box::new(f)
    })
}

/// How a restore may write.
#[derive(Clone, Copy)]
pub struct RestoreOptions<'a> {
    /// No link may resolve outside this directory (the target itself, or the host root when
    /// restoring a host directory whose symlinks point elsewhere on the host).
    pub jail: &'a Path,
    /// Whether symlinks with absolute targets are allowed (they resolve against the host root
    /// at run time; only for host-tree restores, where `jail` is the host root).
    pub allow_absolute_symlinks: bool,
    /// When set, mirror the archive: after extracting, delete what is in the target but not in
    /// the archive, except the paths (relative to the target) this function keeps.
    pub mirror_keep: Option<&'a dyn Fn(&Path) -> bool>,
    /// The entries are host paths and the target is the host root (`jail` itself; no mirror):
    /// the directories on the way to each entry are resolved inside the root as the host
    /// resolves them ([`resolve_in_root`]: links followed, never out of the root), and the
    /// entry is written where they lead (`opt/x` into `var/opt/x` on RHCOS). Otherwise every
    /// directory on the way to an entry must be a real one ([`check_dir_beneath`]).
    pub host_paths: bool,
}

impl std::fmt::Debug for RestoreOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("jail", &self.jail)
            .field("allow_absolute_symlinks", &self.allow_absolute_symlinks)
            .field("mirror", &self.mirror_keep.is_some())
            .field("host_paths", &self.host_paths)
            .finish()
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Entries extracted.
    pub entries: u64,
    /// Paths deleted by mirroring.
    pub deleted: u64,
}

/// The entry name as a safe relative path, or why not.
fn safe_name(raw: &Path) -> Result<PathBuf, String> {
    if raw.is_absolute() {
        return Err("absolute path".into());
    }
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` in path".into()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
        }
    }
    Ok(out)
}

/// Passes reads through and remembers whether the stream ended (a read returned nothing).
struct EofReader<'c, R> {
    inner: R,
    eof: &'c std::cell::Cell<bool>,
}

impl<R: Read> Read for EofReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof.set(true);
        }
        Ok(n)
    }
}

/// A complete dry run of a restore of `archive` into `dest`, writing nothing: every entry's
/// name (no absolute paths, no `..`), type, link target (hard links only to earlier entries;
/// symlinks not out of the jail) and data (read to the end: a truncated entry, a damaged
/// compressed stream or a missing end-of-archive marker is refused); and the disk: `dest` is
/// reached from the jail through real directories only (a caller resolves it first), and so is
/// every entry's parent, except where an earlier directory entry of the archive replaces what
/// is on disk (the rule of [`check_dir_beneath`]); with [`RestoreOptions::host_paths`], every
/// entry's parent (and directory) resolves inside the jail instead ([`resolve_in_root`]).
/// Returns the entry names, in archive order.
pub fn check(
    archive: &Path,
    dest: &Path,
    opts: &RestoreOptions<'_>,
) -> Result<Vec<PathBuf>, ArchiveError> {
    check_listing(archive, dest, opts).map(|l| l.names)
}

/// What a checked archive holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The entry names, in archive order.
    pub names: Vec<PathBuf>,
    /// Bytes of file data (regular files; hard links count nothing), as
    /// [`ArchiveWriter::bytes`] counts them.
    pub bytes: u64,
}

/// [`check`], also returning the bytes of file data the archive holds.
pub fn check_listing(
    archive: &Path,
    dest: &Path,
    opts: &RestoreOptions<'_>,
) -> Result<Listing, ArchiveError> {
    let jail = normalize_abs(opts.jail);
    let dest_abs = normalize_abs(dest);
    if !dest_abs.starts_with(&jail) {
        return Err(ArchiveError::Unsafe {
            archive: archive.to_owned(),
            entry: String::new(),
            reason: format!(
                "target {} is outside the jail {}",
                dest.display(),
                opts.jail.display()
            ),
        });
    }
    if opts.host_paths && (dest_abs != jail || opts.mirror_keep.is_some()) {
        return Err(ArchiveError::Unsafe {
            archive: archive.to_owned(),
            entry: String::new(),
            reason: format!(
                "an archive of host paths is restored at the host root {} itself, without a mirror (not into {})",
                opts.jail.display(),
                dest.display()
            ),
        });
    }
    let on_disk = |source: InRootError| ArchiveError::OnDisk {
        archive: archive.to_owned(),
        dest: dest.to_owned(),
        source: Box::new(source),
    };
    check_dir_beneath(opts.jail, dest).map_err(on_disk)?;
    let damaged = |reason: String| ArchiveError::Damaged {
        archive: archive.to_owned(),
        reason,
    };
    let eof = std::cell::Cell::new(false);
    let reader = EofReader {
        inner: open_reader(archive)?,
        eof: &eof,
    };
    // An error once the stream has ended is a truncation, whatever the tar reader calls it;
    // any other is damage too (a corrupt compressed stream, a bad header, a read error).
    let read_err = |e: io::Error| {
        if eof.get() {
            damaged(format!("truncated ({e})"))
        } else {
            damaged(format!("cannot be read to its end ({e})"))
        }
    };
    let mut ar = tar::Archive::new(reader);
    let mut names = Vec::new();
    let mut bytes = 0u64;
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    for entry in ar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path().map_err(read_err)?.into_owned();
        let unsafe_entry = |reason: String| ArchiveError::Unsafe {
            archive: archive.to_owned(),
            entry: raw.display().to_string(),
            reason,
        };
        let name = safe_name(&raw).map_err(&unsafe_entry)?;
        check_header_fields(&mut entry)
            .map_err(|e| damaged(format!("entry {}: unusable header ({e})", raw.display())))?;
        let size = entry.size();
        let read = io::copy(&mut entry, &mut io::sink()).map_err(read_err)?;
        if read != size {
            return Err(damaged(format!(
                "truncated: entry {} holds {read} of its {size} bytes",
                raw.display()
            )));
        }
        if name.as_os_str().is_empty() {
            continue;
        }
        for anc in name.ancestors().skip(1) {
            if symlinks.contains(anc) {
                return Err(unsafe_entry(format!(
                    "would be written through the symlink {}",
                    anc.display()
                )));
            }
        }
        let parent = name.parent().unwrap_or(Path::new(""));
        // Where the entry's parent is on disk.
        let at = if opts.host_paths {
            let at = resolve_in_root(opts.jail, parent).map_err(on_disk)?;
            if entry.header().entry_type() == tar::EntryType::Directory {
                resolve_in_root(opts.jail, &name).map_err(on_disk)?;
            }
            at
        } else {
            if !parent.as_os_str().is_empty() {
                match check_dir_beneath(dest, &dest.join(parent)) {
                    Ok(()) => {}
                    // The archive's own directory replaces it before this entry is written.
                    Err(InRootError::Symlink { path, .. } | InRootError::NotDir { path })
                        if path.strip_prefix(dest).is_ok_and(|r| dirs.contains(r)) => {}
                    Err(e) => return Err(on_disk(e)),
                }
            }
            dest_abs.join(parent)
        };
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                dirs.insert(name.clone());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                bytes = bytes.saturating_add(size);
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(read_err)?
                    .ok_or_else(|| unsafe_entry("symlink without a target".into()))?;
                if target.is_absolute() {
                    if !opts.allow_absolute_symlinks {
                        return Err(unsafe_entry(format!(
                            "symlink to the absolute path {}",
                            target.display()
                        )));
                    }
                } else {
                    let resolved = normalize_abs(&at.join(&target));
                    if !resolved.starts_with(&jail) {
                        return Err(unsafe_entry(format!(
                            "symlink to {} escapes {}",
                            target.display(),
                            opts.jail.display()
                        )));
                    }
                }
                symlinks.insert(name.clone());
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(read_err)?
                    .ok_or_else(|| unsafe_entry("hard link without a target".into()))?;
                let t = safe_name(&target)
                    .map_err(|r| unsafe_entry(format!("hard link target: {r}")))?;
                if !seen.contains(&t) || symlinks.contains(&t) {
                    return Err(unsafe_entry(format!(
                        "hard link to {}, which is not an earlier file of the archive",
                        target.display()
                    )));
                }
            }
            other => return Err(unsafe_entry(format!("unsupported entry type {other:?}"))),
        }
        if kind != tar::EntryType::Directory {
            // A directory entry replaced by something else no longer shields what is below.
            dirs.remove(&name);
        }
        seen.insert(name.clone());
        names.push(name);
    }
    // The tar reader stops at a zero block (the end-of-archive marker) or at the end of the
    // stream; only the first is a complete archive.
    if eof.get() {
        return Err(damaged(
            "truncated: it ends without the end-of-archive marker".into(),
        ));
    }
    // The rest (padding) must be zeros, and the compressed stream must end cleanly.
    let mut rest = ar.into_inner();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rest.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(damaged("data after the end-of-archive marker".into()));
        }
    }
    Ok(Listing { names, bytes })
}

/// Parses the header fields (and PAX records) the extraction uses, so a bad one is found
/// before anything is written rather than halfway through a restore.
fn check_header_fields<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<()> {
    let h = entry.header();
    h.mode()?;
    h.uid()?;
    h.gid()?;
    h.mtime()?;
    if matches!(h.entry_type(), tar::EntryType::Char | tar::EntryType::Block) {
        h.device_major()?;
        h.device_minor()?;
    }
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            ext?;
        }
    }
    Ok(())
}

fn normalize_abs(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    let abs = if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Restores `archive` into `dest` (created if missing), safely: the whole archive is checked
/// first; then entries are extracted with their owners, modes, mtimes and xattrs; existing
/// paths of another type are replaced. With `mirror_keep`, what the archive does not hold is
/// deleted afterwards (except the kept paths).
pub fn restore(
    archive: &Path,
    dest: &Path,
    opts: &RestoreOptions<'_>,
) -> Result<RestoreStats, ArchiveError> {
    let names = check(archive, dest, opts)?;
    fs::create_dir_all(dest).map_err(io_at(dest))?;
    let mut ar = tar::Archive::new(open_reader(archive)?);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let mut stats = RestoreStats::default();
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    // Where each entry was written (host paths: for the hard links to it).
    let mut written: HashMap<PathBuf, PathBuf> = HashMap::new();
    for entry in ar.entries().map_err(io_at(archive))? {
        let mut entry = entry.map_err(io_at(archive))?;
        let raw = entry.path().map_err(io_at(archive))?.into_owned();
        let name = safe_name(&raw).map_err(|reason| ArchiveError::Unsafe {
            archive: archive.to_owned(),
            entry: raw.display().to_string(),
            reason,
        })?;
        if name.as_os_str().is_empty() {
            continue;
        }
        let is_dir = entry.header().entry_type() == tar::EntryType::Directory;
        let on_disk = |e: InRootError| ArchiveError::Unsafe {
            archive: archive.to_owned(),
            entry: raw.display().to_string(),
            reason: e.to_string(),
        };
        // The rule `check` applied, again: the disk may have changed since.
        let parent = name.parent().unwrap_or(Path::new(""));
        let target = if opts.host_paths {
            let target = if is_dir {
                resolve_in_root(opts.jail, &name).map_err(on_disk)?
            } else {
                resolve_in_root(opts.jail, parent)
                    .map_err(on_disk)?
                    .join(name.file_name().unwrap_or_default())
            };
            // What is missing on the way was in the entry's name (not a link's target).
            if let Some(at) = target.parent() {
                fs::create_dir_all(at).map_err(io_at(at))?;
            }
            target
        } else {
            // Never write through a symlink that is on disk now.
            check_dir_beneath(dest, &dest.join(parent)).map_err(on_disk)?;
            dest.join(&name)
        };
        if let Ok(m) = fs::symlink_metadata(&target) {
            if m.is_dir() && !is_dir {
                fs::remove_dir_all(&target).map_err(io_at(&target))?;
            } else if !m.is_dir() && is_dir {
                fs::remove_file(&target).map_err(io_at(&target))?;
            }
        }
        if is_dir {
            dirs.push((target.clone(), entry.header().mtime().unwrap_or(0)));
        }
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block
        ) {
            make_special(&entry, kind, &target).map_err(io_at(&target))?;
        } else if !opts.host_paths {
            entry.unpack_in(dest).map_err(io_at(&target))?;
        } else if kind == tar::EntryType::Link {
            // To where the earlier entry was written (`check` made sure there is one).
            let first = entry
                .link_name()
                .map_err(io_at(archive))?
                .and_then(|l| safe_name(&l).ok())
                .and_then(|l| written.get(&l).cloned())
                .ok_or_else(|| ArchiveError::Unsafe {
                    archive: archive.to_owned(),
                    entry: raw.display().to_string(),
                    reason: "hard link to an entry not written".into(),
                })?;
            if fs::symlink_metadata(&target).is_ok() {
                fs::remove_file(&target).map_err(io_at(&target))?;
            }
            fs::hard_link(&first, &target).map_err(io_at(&target))?;
        } else {
            entry.unpack(&target).map_err(io_at(&target))?;
        }
        if opts.host_paths && !is_dir {
            written.insert(name, target.clone());
        }
        if is_dir {
            // The tar crate sets xattrs on files only.
            set_xattrs(&mut entry, &target).map_err(io_at(&target))?;
        }
        stats.entries += 1;
    }
    // Directory mtimes last: extracting their children changed them.
    for (dir, mtime) in dirs.iter().rev() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(*mtime);
        if let Ok(f) = File::open(dir) {
            let _ = f.set_modified(t);
        }
    }
    if let Some(keep) = opts.mirror_keep {
        let wanted: HashSet<PathBuf> = names.into_iter().collect();
        stats.deleted = mirror(dest, Path::new(""), &wanted, keep)?;
    }
    Ok(stats)
}

/// Creates a fifo or device node with the entry's mode, owner and mtime.
fn make_special<R: Read>(
    entry: &tar::Entry<'_, R>,
    kind: tar::EntryType,
    target: &Path,
) -> io::Result<()> {
    let h = entry.header();
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(target)?,
        Ok(_) => fs::remove_file(target)?,
        Err(_) => {}
    }
    let mode = h.mode()? & 0o7777;
    let (file_type, dev) = match kind {
        tar::EntryType::Fifo => (rustix::fs::FileType::Fifo, 0),
        tar::EntryType::Char => (
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::makedev(
                h.device_major()?.unwrap_or(0),
                h.device_minor()?.unwrap_or(0),
            ),
        ),
        _ => (
            rustix::fs::FileType::BlockDevice,
            rustix::fs::makedev(
                h.device_major()?.unwrap_or(0),
                h.device_minor()?.unwrap_or(0),
            ),
        ),
    };
    rustix::fs::mknodat(
        rustix::fs::CWD,
        target,
        file_type,
        rustix::fs::Mode::from_raw_mode(mode),
        dev,
    )?;
    std::os::unix::fs::lchown(
        target,
        h.uid().ok().and_then(|u| u32::try_from(u).ok()),
        h.gid().ok().and_then(|g| u32::try_from(g).ok()),
    )?;
    fs::set_permissions(target, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

/// Applies the entry's `SCHILY.xattr.*` PAX records to `target`.
fn set_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, target: &Path) -> io::Result<()> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(());
    };
    for ext in exts {
        let ext = ext?;
        let Ok(key) = ext.key() else { continue };
        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
            // A filesystem without xattrs (or without this namespace) keeps the file without it.
            match rustix::fs::lsetxattr(
                target,
                name,
                ext.value_bytes(),
                rustix::fs::XattrFlags::empty(),
            ) {
                Err(rustix::io::Errno::OPNOTSUPP) => {}
                r => r?,
            }
        }
    }
    Ok(())
}

fn mirror(
    dest: &Path,
    rel: &Path,
    wanted: &HashSet<PathBuf>,
    keep: &dyn Fn(&Path) -> bool,
) -> Result<u64, ArchiveError> {
    let dir = dest.join(rel);
    let mut deleted = 0;
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_at(&dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_at(&dir))?;
        let r = rel.join(e.file_name());
        if keep(&r) {
            continue;
        }
        let p = dest.join(&r);
        let m = fs::symlink_metadata(&p).map_err(io_at(&p))?;
        if !wanted.contains(&r) {
            if m.is_dir() {
                fs::remove_dir_all(&p).map_err(io_at(&p))?;
            } else {
                fs::remove_file(&p).map_err(io_at(&p))?;
            }
            deleted += 1;
        } else if m.is_dir() {
            deleted += mirror(dest, &r, wanted, keep)?;
        }
    }
    Ok(deleted)
}
