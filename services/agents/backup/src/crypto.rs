//! Streaming authenticated encryption of backup files.
//!
//! Backups leave the database host and sit on storage we do not fully trust,
//! so every stored byte is encrypted *and* authenticated: a restore must never
//! feed modified, reordered, truncated or extended data to the database. Backups
//! can be far larger than memory, so the data is processed as a stream of
//! independently authenticated chunks (the STREAM construction of Hoang, Reyhanitabar,
//! Rogaway and Vizár) with AES-256-GCM, and SHA-256 digests of both the plaintext
//! and the stored bytes are computed on the fly so a manifest can record them
//! without a second pass over the data.
//!
//! # File format (version 1)
//!
//! ```text
//! header (HEADER_BYTES = 25 bytes):
//!   magic             8 bytes   b"DBSWENC1"
//!   format version    1 byte    1
//!   log2(chunk size)  1 byte    20 (chunks hold 1 MiB of plaintext)
//!   key fingerprint   8 bytes   first 8 bytes of
//!                               SHA-256(b"dbswarm backup key fingerprint v1" || key)
//!   nonce prefix      7 bytes   random, fresh for every file
//! chunks, each = AES-256-GCM ciphertext || 16-byte tag:
//!   chunk 0 .. chunk n-1        exactly CHUNK_BYTES plaintext each
//!   chunk n (the final chunk)   0..=CHUNK_BYTES plaintext
//! ```
//!
//! * The nonce of chunk `i` is `prefix (7) || i as u32 big-endian (4) || last (1)`
//!   where `last` is 1 for the final chunk and 0 for every other one. The counter
//!   stops reordering and dropping chunks from the middle; the last flag stops
//!   truncation at a chunk boundary, because a chunk sealed as "not last" never
//!   opens as the final one. The random prefix keeps nonces unique across the
//!   many files encrypted under one long-lived key (7 random bytes: collisions
//!   are negligible for any realistic number of backups).
//! * The AAD of every chunk is the whole 25-byte header, which binds each chunk
//!   to its file: chunks cannot be spliced between files, and any change to
//!   the header makes every chunk fail authentication.
//! * The writer always emits a final chunk, even an empty one (16 bytes: just
//!   the tag) when the plaintext is a multiple of CHUNK_BYTES, so the reader
//!   can detect a file cut exactly at a chunk boundary.
//! * The reader reads CHUNK_BYTES + TAG_BYTES at a time. A shorter read before
//!   end of file is the final chunk. A full-size chunk is the final one when
//!   end of file follows it (the reader looks ahead one byte); if it then only
//!   opens as a non-final chunk, the file was truncated. A file that ends right
//!   after a non-final chunk, or inside the header, is truncated.
//!
//! The key fingerprint in the header lets a restore say "wrong key" (naming
//! both keys by fingerprint) instead of the less helpful "corrupted file".
//! It reveals nothing about the key beyond which key it is.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest;
use ring::hmac;
use ring::rand::{self, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of a raw backup key: AES-256 takes 32 bytes.
pub const KEY_BYTES: usize = 32;

/// log2 of [`CHUNK_BYTES`], as stored in the header.
const CHUNK_LOG2: u8 = 20;

/// Plaintext bytes per chunk (1 MiB): large enough that the 16-byte tag per
/// chunk is negligible overhead, small enough to hold one chunk in memory.
pub const CHUNK_BYTES: usize = 1 << CHUNK_LOG2;

/// Size of the AES-GCM authentication tag appended to every chunk.
pub const TAG_BYTES: usize = 16;

/// Header size: magic (8) + version (1) + log2 chunk size (1) + key
/// fingerprint (8) + nonce prefix (7).
pub const HEADER_BYTES: usize = MAGIC.len() + 1 + 1 + FINGERPRINT_BYTES + PREFIX_BYTES;

/// Stored size of a full chunk: ciphertext plus tag.
const FRAME_BYTES: usize = CHUNK_BYTES + TAG_BYTES;

/// Identifies the format; a file that does not start with it is not ours.
const MAGIC: [u8; 8] = *b"DBSWENC1";

/// The only format version this code writes and reads.
const FORMAT_VERSION: u8 = 1;

/// Raw key fingerprint bytes stored in the header.
const FINGERPRINT_BYTES: usize = 8;

/// Random per-file nonce prefix; the remaining 5 nonce bytes are the chunk
/// counter and the last flag.
const PREFIX_BYTES: usize = 7;

/// Domain separation for the fingerprint, so it never equals any other hash of the key.
const FINGERPRINT_CONTEXT: &[u8] = b"dbswarm backup key fingerprint v1";

/// Domain separation for the manifest HMAC key, so it is independent of the encryption key.
const HMAC_CONTEXT: &[u8] = b"dbswarm backup manifest hmac v1";

// The layout above hard-codes these; fail the build if ring ever disagrees.
const _: () = assert!(TAG_BYTES == ring::aead::MAX_TAG_LEN);
const _: () = assert!(PREFIX_BYTES + 4 + 1 == NONCE_LEN);
const _: () = assert!(HEADER_BYTES == 25);

/// The secret key that encrypts backups and authenticates their manifests.
///
/// Holds ready-to-use derived keys (AES-256-GCM and the manifest HMAC key)
/// rather than the raw bytes, so the raw key is not kept around longer than
/// parsing needs it. `Debug` prints only the fingerprint, so the key cannot
/// leak into logs.
#[derive(Clone)]
pub struct BackupKey {
    aead: LessSafeKey,
    hmac: hmac::Key,
    fingerprint_raw: [u8; FINGERPRINT_BYTES],
    fingerprint: String,
}

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupKey")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Why a backup key could not be loaded or generated. Messages never contain
/// key material (not even the offending character), since they end up in logs.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("backup key must be 64 hex characters or base64 of 32 bytes; got {chars} characters")]
    BadLength { chars: usize },
    #[error("backup key has 64 characters but is not hex: character {position} is not 0-9, a-f or A-F")]
    BadHex { position: usize },
    #[error("backup key has 44 characters but is not standard base64 of 32 bytes: {problem}")]
    BadBase64 { problem: String },
    #[error("backup key is not UTF-8 text")]
    NotText,
    #[error("cannot read backup key file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("backup key file {path}: {source}")]
    InFile { path: PathBuf, source: Box<KeyError> },
    #[error("the system random number generator failed")]
    Random,
    #[error("the AES-256-GCM implementation rejected the backup key")]
    Unusable,
}

impl BackupKey {
    /// 64 hex characters, or standard base64 (with padding) of 32 bytes;
    /// surrounding whitespace ignored. Two encodings because operators make
    /// keys with whatever is at hand (`openssl rand -hex 32` or `-base64 32`).
    pub fn from_text(text: &str) -> Result<BackupKey, KeyError> {
        let text = text.trim();
        let chars = text.chars().count();
        let raw = match chars {
            64 => decode_hex_key(text)?,
            44 => decode_base64_key(text)?,
            _ => return Err(KeyError::BadLength { chars }),
        };
        BackupKey::from_bytes(&raw)
    }

    /// Reads the file and parses it like [`from_text`](Self::from_text). Errors
    /// name the path, since the operator has to find and fix that file.
    pub fn from_file(path: &Path) -> Result<BackupKey, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let in_file = |source: KeyError| KeyError::InFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| in_file(KeyError::NotText))?;
        BackupKey::from_text(text).map_err(in_file)
    }

    /// 32 random bytes from ring's `SystemRandom`, as 64 hex chars: the text of
    /// a new key file, in the encoding `from_text` prefers.
    pub fn generate_text() -> Result<String, KeyError> {
        let rng = SystemRandom::new();
        let raw: [u8; KEY_BYTES] = rand::generate(&rng).map_err(|_| KeyError::Random)?.expose();
        Ok(hex::encode(raw))
    }

    /// 16 hex chars: the first 8 bytes of
    /// SHA-256(b"dbswarm backup key fingerprint v1" || key). Identifies the key
    /// (in file headers, manifests and error messages) without revealing it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// HMAC-SHA256 (lowercase hex) of `data` under a key derived from this key:
    /// derived = SHA-256(b"dbswarm backup manifest hmac v1" || key). Used to
    /// authenticate manifests, so that an attacker with write access to backup
    /// storage cannot alter the recorded sizes and digests. The derived key is
    /// separate so the AES key is never used for anything but AES-GCM.
    pub fn sign(&self, data: &[u8]) -> String {
        hex::encode(hmac::sign(&self.hmac, data).as_ref())
    }

    /// Checks a [`sign`](Self::sign) output in constant time (`ring::hmac::verify`),
    /// so timing does not reveal how much of a forged signature was right.
    /// False on malformed hex.
    pub fn verify_signature(&self, data: &[u8], signature_hex: &str) -> bool {
        match hex::decode(signature_hex.trim()) {
            Ok(tag) => hmac::verify(&self.hmac, data, &tag).is_ok(),
            Err(_) => false,
        }
    }

    fn from_bytes(raw: &[u8; KEY_BYTES]) -> Result<BackupKey, KeyError> {
        let unbound = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| KeyError::Unusable)?;

        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(FINGERPRINT_CONTEXT);
        ctx.update(raw);
        let hash = ctx.finish();
        let mut fingerprint_raw = [0u8; FINGERPRINT_BYTES];
        let prefix = hash.as_ref().get(..FINGERPRINT_BYTES).ok_or(KeyError::Unusable)?;
        fingerprint_raw.copy_from_slice(prefix);

        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(HMAC_CONTEXT);
        ctx.update(raw);
        let derived = ctx.finish();

        Ok(BackupKey {
            aead: LessSafeKey::new(unbound),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            fingerprint_raw,
            fingerprint: hex::encode(fingerprint_raw),
        })
    }
}

fn decode_hex_key(text: &str) -> Result<[u8; KEY_BYTES], KeyError> {
    let mut raw = [0u8; KEY_BYTES];
    let mut digits = text.chars().enumerate().map(|(i, c)| {
        c.to_digit(16)
            .map(|d| d as u8)
            .ok_or(KeyError::BadHex { position: i + 1 })
    });
    for byte in raw.iter_mut() {
        let (Some(high), Some(low)) = (digits.next(), digits.next()) else {
            return Err(KeyError::BadLength {
                chars: text.chars().count(),
            });
        };
        *byte = (high? << 4) | low?;
    }
    Ok(raw)
}

fn decode_base64_key(text: &str) -> Result<[u8; KEY_BYTES], KeyError> {
    let problem = |problem: String| KeyError::BadBase64 { problem };
    // 32 bytes = 256 bits = 43 sextets (258 bits, the last 2 zero) + one '='.
    let (data, padding) = match text.char_indices().nth(43) {
        Some((at, _)) => text.split_at(at),
        None => ("", ""),
    };
    if padding != "=" || data.contains('=') {
        return Err(problem(
            "it must be 43 base64 characters followed by exactly one '='".to_string(),
        ));
    }
    let mut raw = [0u8; KEY_BYTES];
    let mut out = raw.iter_mut();
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for (i, c) in data.chars().enumerate() {
        let value = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '+' => 62,
            '/' => 63,
            _ => {
                return Err(problem(format!(
                    "character {} is not in the standard base64 alphabet",
                    i + 1
                )));
            }
        };
        acc = (acc << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            let Some(slot) = out.next() else {
                return Err(problem("it decodes to more than 32 bytes".to_string()));
            };
            *slot = (acc >> bits) as u8;
            acc &= (1 << bits) - 1;
        }
    }
    if out.next().is_some() || bits != 2 {
        return Err(problem("it does not decode to exactly 32 bytes".to_string()));
    }
    if acc != 0 {
        return Err(problem(
            "the unused bits of its last character are not zero".to_string(),
        ));
    }
    Ok(raw)
}

/// Why a stream could not be encrypted or decrypted. The data-related
/// messages read as a continuation of the file's name ("backup X: chunk 3 ...").
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Not a dbswarm encrypted file (magic mismatch, or a chunk size this
    /// version does not use) or too short for the header.
    #[error("not a dbswarm encrypted file (bad header)")]
    NotEncrypted,
    /// Written by a newer (or unknown) format version.
    #[error("unsupported dbswarm encrypted file format version {0} (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// Header names another key: reported separately from tampering because
    /// the fix (configure the right key) is entirely different.
    #[error("encrypted with key {file_key}, but the configured backup key is {configured}: wrong key")]
    WrongKey { file_key: String, configured: String },
    /// A chunk failed authentication; `offset` is where it starts in the stored file.
    #[error("chunk {index} (bytes {offset}..) fails authentication: the file was modified or corrupted")]
    Tampered { index: u64, offset: u64 },
    /// Ended before the final chunk (`bytes` is the stored size seen).
    #[error("ends after {bytes} bytes without its final chunk: the file is truncated")]
    Truncated { bytes: u64 },
    /// Data after the final chunk (from `Opener::open_chunk` called again
    /// after the final chunk).
    #[error("has data after its final chunk")]
    TrailingData,
    /// Reading or writing the streams failed; also API misuse of
    /// `Sealer`/`Opener` (kind `InvalidInput`) and a failing random number
    /// generator.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// More than 2^32 chunks (4 PiB): the chunk counter would repeat a nonce.
    #[error("too large: more than 2^32 chunks of 1 MiB in one stream")]
    TooLarge,
}

fn misuse(message: &'static str) -> CryptoError {
    CryptoError::Io(io::Error::new(io::ErrorKind::InvalidInput, message))
}

fn chunk_nonce(prefix: &[u8; PREFIX_BYTES], counter: u32, last: bool) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    let (p, rest) = nonce.split_at_mut(PREFIX_BYTES);
    p.copy_from_slice(prefix);
    let (c, flag) = rest.split_at_mut(4);
    c.copy_from_slice(&counter.to_be_bytes());
    flag.fill(u8::from(last));
    Nonce::assume_unique_for_key(nonce)
}

/// Encrypts one file chunk by chunk (sync core of [`encrypt_stream`]).
pub struct Sealer {
    key: LessSafeKey,
    header: [u8; HEADER_BYTES],
    prefix: [u8; PREFIX_BYTES],
    next_index: u64,
    finished: bool,
}

impl Sealer {
    /// A sealer with a fresh random nonce prefix (never reuse a nonce under a
    /// key); returns it with the header bytes to write first.
    pub fn new(key: &BackupKey) -> Result<(Sealer, [u8; HEADER_BYTES]), CryptoError> {
        let rng = SystemRandom::new();
        let prefix: [u8; PREFIX_BYTES] = rand::generate(&rng)
            .map_err(|_| CryptoError::Io(io::Error::other("the system random number generator failed")))?
            .expose();
        let sealer = Sealer::with_prefix(key, prefix);
        let header = sealer.header;
        Ok((sealer, header))
    }

    fn with_prefix(key: &BackupKey, prefix: [u8; PREFIX_BYTES]) -> Sealer {
        let mut header = [0u8; HEADER_BYTES];
        let parts = MAGIC
            .iter()
            .chain(&[FORMAT_VERSION, CHUNK_LOG2])
            .chain(&key.fingerprint_raw)
            .chain(&prefix);
        for (slot, byte) in header.iter_mut().zip(parts) {
            *slot = *byte;
        }
        Sealer {
            key: key.aead.clone(),
            header,
            prefix,
            next_index: 0,
            finished: false,
        }
    }

    /// Seals one chunk in place: `buf` holds plaintext (<= CHUNK_BYTES, ==
    /// CHUNK_BYTES unless `last`) and gets ciphertext + tag appended. Errors
    /// (without touching `buf`) after the final chunk or with a wrong size
    /// (`Io` of kind `InvalidInput`: the file would be unreadable), and on
    /// counter overflow (`TooLarge`).
    pub fn seal_chunk(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), CryptoError> {
        if self.finished {
            return Err(misuse("seal_chunk called after the final chunk"));
        }
        if buf.len() > CHUNK_BYTES || (!last && buf.len() != CHUNK_BYTES) {
            return Err(misuse(
                "a chunk must hold CHUNK_BYTES of plaintext (the final chunk at most that)",
            ));
        }
        let counter = u32::try_from(self.next_index).map_err(|_| CryptoError::TooLarge)?;
        let nonce = chunk_nonce(&self.prefix, counter, last);
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(&self.header), buf)
            .map_err(|_| misuse("AES-GCM refused to seal the chunk"))?;
        self.next_index += 1;
        self.finished = last;
        Ok(())
    }
}

/// Decrypts one file chunk by chunk (sync core of [`decrypt_stream`]).
pub struct Opener {
    key: LessSafeKey,
    header: [u8; HEADER_BYTES],
    prefix: [u8; PREFIX_BYTES],
    next_index: u64,
    /// Where the next chunk starts in the stored file.
    offset: u64,
    finished: bool,
}

impl Opener {
    /// Checks magic, version, chunk size and the key fingerprint (`WrongKey`
    /// names both fingerprints as 16-hex strings). Only the first
    /// HEADER_BYTES of `header` are examined, so the start of a file will do.
    pub fn new(key: &BackupKey, header: &[u8]) -> Result<Opener, CryptoError> {
        let header: [u8; HEADER_BYTES] = header
            .get(..HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or(CryptoError::NotEncrypted)?;
        let (magic, rest) = header.split_at(MAGIC.len());
        let (&[version, chunk_log2], rest) =
            rest.split_first_chunk::<2>().ok_or(CryptoError::NotEncrypted)?;
        let (fingerprint, prefix) = rest.split_at(FINGERPRINT_BYTES);
        if magic != MAGIC {
            return Err(CryptoError::NotEncrypted);
        }
        if version != FORMAT_VERSION {
            return Err(CryptoError::UnsupportedVersion(version));
        }
        if chunk_log2 != CHUNK_LOG2 {
            // Version 1 fixes the chunk size; anything else is a damaged header.
            return Err(CryptoError::NotEncrypted);
        }
        if fingerprint != key.fingerprint_raw {
            return Err(CryptoError::WrongKey {
                file_key: hex::encode(fingerprint),
                configured: key.fingerprint.clone(),
            });
        }
        let prefix: [u8; PREFIX_BYTES] = prefix.try_into().map_err(|_| CryptoError::NotEncrypted)?;
        Ok(Opener {
            key: key.aead.clone(),
            header,
            prefix,
            next_index: 0,
            offset: HEADER_BYTES as u64,
            finished: false,
        })
    }

    /// Opens one chunk in place (`buf`: ciphertext + tag → plaintext). On
    /// failure the state does not advance (so the caller may retry with the
    /// other `last` flag on a copy) and `buf` holds no plaintext (ring zeroes
    /// it). Errors: `Tampered` if the tag does not verify; `Truncated` if a
    /// final chunk is shorter than a tag; `TrailingData` after the final chunk;
    /// `TooLarge` on counter overflow; `Io` of kind `InvalidInput` if a
    /// non-final chunk is not exactly CHUNK_BYTES + TAG_BYTES (framing is the
    /// caller's job).
    pub fn open_chunk(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), CryptoError> {
        if self.finished {
            return Err(CryptoError::TrailingData);
        }
        let len = buf.len();
        if len > FRAME_BYTES || (!last && len != FRAME_BYTES) {
            return Err(misuse(
                "a chunk must be CHUNK_BYTES + TAG_BYTES long (the final chunk at most that)",
            ));
        }
        if len < TAG_BYTES {
            return Err(CryptoError::Truncated {
                bytes: self.offset.saturating_add(len as u64),
            });
        }
        let counter = u32::try_from(self.next_index).map_err(|_| CryptoError::TooLarge)?;
        let nonce = chunk_nonce(&self.prefix, counter, last);
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(&self.header), buf)
            .map_err(|_| CryptoError::Tampered {
                index: self.next_index,
                offset: self.offset,
            })?
            .len();
        buf.truncate(plain_len);
        self.next_index += 1;
        self.offset = self.offset.saturating_add(len as u64);
        self.finished = last;
        Ok(())
    }
}

/// What a stream held: sizes and SHA-256 (lowercase hex) of the plaintext and
/// of the stored (encrypted) bytes. The plaintext digest proves a restore got
/// back what was backed up; the stored digest lets storage be verified
/// without the key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamDigest {
    pub plain_bytes: u64,
    pub plain_sha256: String,
    pub stored_bytes: u64,
    pub stored_sha256: String,
}

/// SHA-256 of bytes as lowercase hex (helper, used elsewhere too).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}

/// Reads into `buf` until it holds `limit` bytes or the reader is at its end.
/// Loops because pipes and sockets return short reads; never grows `buf`
/// beyond `limit` (so a buffer with that capacity is never reallocated).
async fn fill<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>, limit: usize) -> io::Result<()> {
    while buf.len() < limit {
        let want = (limit - buf.len()) as u64;
        match (&mut *reader).take(want).read_buf(buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one byte, or `None` at the end of the stream.
async fn read_byte<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    loop {
        match reader.read(&mut byte).await {
            Ok(0) => return Ok(None),
            Ok(_) => {
                let [b] = byte;
                return Ok(Some(b));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Chunks read ahead of the one being sealed and written, at most.
const PIPELINE_CHUNKS: usize = 4;

/// The CPU side of encryption: digests of both sides and the sealer.
struct SealState {
    sealer: Sealer,
    plain: digest::Context,
    stored: digest::Context,
}

impl SealState {
    fn seal(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), CryptoError> {
        self.plain.update(buf);
        self.sealer.seal_chunk(buf, last)?;
        self.stored.update(buf);
        Ok(())
    }
}

/// Reads `reader` to its end, writes header + sealed chunks to `writer`
/// (flushes at the end; does not shut down or sync, that is the caller's
/// decision). `on_progress(plain_bytes_so_far)` is called after each chunk.
/// Each chunk is filled completely before sealing, since pipes return short
/// reads and only the final chunk may be short.
///
/// Reading is pipelined with the rest: while a chunk is hashed and sealed
/// (on a blocking thread) and written, the next ones are read, up to
/// `PIPELINE_CHUNKS` ahead. A producer such as pg_dump writing into a pipe
/// would otherwise stall on the full pipe for every chunk's CPU work.
pub async fn encrypt_stream<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    key: &BackupKey,
    reader: &mut R,
    writer: &mut W,
    on_progress: &mut (dyn FnMut(u64) + Send),
) -> Result<StreamDigest, CryptoError> {
    let (sealer, header) = Sealer::new(key)?;
    let mut state = Some(SealState {
        sealer,
        plain: digest::Context::new(&digest::SHA256),
        stored: digest::Context::new(&digest::SHA256),
    });
    if let Some(state) = state.as_mut() {
        state.stored.update(&header);
    }
    let mut plain_bytes: u64 = 0;
    let mut stored_bytes: u64 = HEADER_BYTES as u64;
    writer.write_all(&header).await?;

    let (chunks, mut filled) = tokio::sync::mpsc::channel::<Vec<u8>>(PIPELINE_CHUNKS);
    let read = async move {
        loop {
            let mut buf = Vec::with_capacity(FRAME_BYTES);
            fill(reader, &mut buf, CHUNK_BYTES).await?;
            // A full chunk might be followed by end of file; then the final
            // chunk is the empty one read next time round.
            let last = buf.len() < CHUNK_BYTES;
            if chunks.send(buf).await.is_err() || last {
                return Ok::<(), CryptoError>(());
            }
        }
    };
    let seal_and_write = async {
        while let Some(mut buf) = filled.recv().await {
            let last = buf.len() < CHUNK_BYTES;
            let plain_len = buf.len() as u64;
            let mut taken = state.take().ok_or(CryptoError::TooLarge)?;
            let (sealed, back) = tokio::task::spawn_blocking(move || {
                let sealed = taken.seal(&mut buf, last).map(|()| buf);
                (sealed, taken)
            })
            .await
            .map_err(|e| CryptoError::Io(io::Error::other(format!("the sealing thread failed: {e}"))))?;
            state = Some(back);
            let buf = sealed?;
            writer.write_all(&buf).await?;
            plain_bytes += plain_len;
            stored_bytes += buf.len() as u64;
            on_progress(plain_bytes);
            if last {
                break;
            }
        }
        writer.flush().await?;
        Ok::<(), CryptoError>(())
    };
    tokio::try_join!(read, seal_and_write)?;
    let state = state.ok_or(CryptoError::TooLarge)?;
    if !state.sealer.finished {
        return Err(CryptoError::Io(io::Error::other(
            "the stream ended before its final chunk was sealed",
        )));
    }
    Ok(StreamDigest {
        plain_bytes,
        plain_sha256: hex::encode(state.plain.finish().as_ref()),
        stored_bytes,
        stored_sha256: hex::encode(state.stored.finish().as_ref()),
    })
}

/// The inverse of [`encrypt_stream`]: reads header + chunks, writes only
/// authenticated plaintext to `writer` (a chunk is written only after its tag
/// verified, so a restore never consumes forged data), flushes at the end.
/// `on_progress(plain_bytes_so_far)` is called after each chunk. On error the
/// writer may already hold the plaintext of the chunks before the bad one.
pub async fn decrypt_stream<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    key: &BackupKey,
    reader: &mut R,
    writer: &mut W,
    on_progress: &mut (dyn FnMut(u64) + Send),
) -> Result<StreamDigest, CryptoError> {
    let mut plain = digest::Context::new(&digest::SHA256);
    let mut stored = digest::Context::new(&digest::SHA256);
    let mut plain_bytes: u64 = 0;
    let mut buf = Vec::with_capacity(FRAME_BYTES);

    fill(reader, &mut buf, HEADER_BYTES).await?;
    stored.update(&buf);
    let mut stored_bytes = buf.len() as u64;
    if buf.len() < HEADER_BYTES && buf.starts_with(&MAGIC) {
        // Ours, but cut inside the header.
        return Err(CryptoError::Truncated { bytes: stored_bytes });
    }
    let mut opener = Opener::new(key, &buf)?;
    buf.clear();

    loop {
        // `buf` may already hold one byte read ahead by the previous round.
        fill(reader, &mut buf, FRAME_BYTES).await?;
        stored.update(&buf);
        stored_bytes += buf.len() as u64;
        // A full-size chunk is the final one exactly when the stream ends
        // after it, so look one byte ahead.
        let next = if buf.len() == FRAME_BYTES {
            read_byte(reader).await?
        } else {
            None
        };
        let last = next.is_none();

        // Opening destroys the ciphertext on failure, so keep a copy of a
        // full-size final chunk to tell truncation from tampering. This
        // happens at most once per stream (our writer never even produces it).
        let mut saved = (last && buf.len() == FRAME_BYTES).then(|| buf.clone());
        if let Err(err) = opener.open_chunk(&mut buf, last) {
            if let (CryptoError::Tampered { .. }, Some(saved)) = (&err, saved.as_mut())
                && opener.open_chunk(saved, false).is_ok()
            {
                // A valid non-final chunk with nothing after it.
                return Err(CryptoError::Truncated { bytes: stored_bytes });
            }
            return Err(err);
        }
        drop(saved);

        writer.write_all(&buf).await?;
        plain.update(&buf);
        plain_bytes += buf.len() as u64;
        on_progress(plain_bytes);

        match next {
            None => break,
            Some(byte) => {
                buf.clear();
                buf.push(byte);
            }
        }
    }
    writer.flush().await?;

    Ok(StreamDigest {
        plain_bytes,
        plain_sha256: hex::encode(plain.finish().as_ref()),
        stored_bytes,
        stored_sha256: hex::encode(stored.finish().as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// The key 00 01 02 .. 1f, for known-answer tests.
    fn counting_key() -> BackupKey {
        BackupKey::from_text("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .expect("valid key")
    }

    fn other_key() -> BackupKey {
        BackupKey::from_text(&"ab".repeat(32)).expect("valid key")
    }

    /// Deterministic pseudo-random bytes (xorshift), so tampering is not
    /// masked by repetitive plaintext.
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    /// Returns at most `max` bytes per read (cycling through smaller sizes),
    /// like a pipe does.
    struct ShortReader {
        data: Vec<u8>,
        pos: usize,
        max: usize,
        turn: usize,
    }

    impl ShortReader {
        fn new(data: Vec<u8>, max: usize) -> Self {
            ShortReader {
                data,
                pos: 0,
                max,
                turn: 0,
            }
        }
    }

    impl AsyncRead for ShortReader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            this.turn += 1;
            let step = 1 + (this.turn * 7919) % this.max;
            let n = step.min(out.remaining()).min(this.data.len() - this.pos);
            out.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn encrypt(key: &BackupKey, plain: &[u8]) -> (Vec<u8>, StreamDigest) {
        let mut reader = ShortReader::new(plain.to_vec(), 100_000);
        let mut out = Vec::new();
        let digest = encrypt_stream(key, &mut reader, &mut out, &mut |_| {})
            .await
            .expect("encrypts");
        (out, digest)
    }

    async fn decrypt(key: &BackupKey, stored: &[u8]) -> (Result<StreamDigest, CryptoError>, Vec<u8>) {
        let mut reader = ShortReader::new(stored.to_vec(), 100_000);
        let mut out = Vec::new();
        let result = decrypt_stream(key, &mut reader, &mut out, &mut |_| {}).await;
        (result, out)
    }

    #[tokio::test]
    async fn round_trip_all_boundary_sizes() {
        let key = counting_key();
        for (i, len) in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES + 5,
        ]
        .into_iter()
        .enumerate()
        {
            let plain = data(len, i as u64 + 1);
            let mut progress = Vec::new();
            let mut reader = ShortReader::new(plain.clone(), 65_537);
            let mut stored = Vec::new();
            let digest = encrypt_stream(&key, &mut reader, &mut stored, &mut |n| progress.push(n))
                .await
                .expect("encrypts");

            // Every chunk but the last is full, and there is always a final
            // chunk: this only holds if short reads were accumulated.
            let chunks = len / CHUNK_BYTES + 1;
            assert_eq!(stored.len(), HEADER_BYTES + len + chunks * TAG_BYTES, "len {len}");
            let expected_progress: Vec<u64> =
                (1..=chunks).map(|c| (c * CHUNK_BYTES).min(len) as u64).collect();
            assert_eq!(progress, expected_progress, "len {len}");

            assert_eq!(digest.plain_bytes, len as u64);
            assert_eq!(digest.plain_sha256, sha256_hex(&plain));
            assert_eq!(digest.stored_bytes, stored.len() as u64);
            assert_eq!(digest.stored_sha256, sha256_hex(&stored));

            let mut progress = Vec::new();
            let mut reader = ShortReader::new(stored.clone(), 50_000);
            let mut restored = Vec::new();
            let back = decrypt_stream(&key, &mut reader, &mut restored, &mut |n| progress.push(n))
                .await
                .expect("decrypts");
            assert!(restored == plain, "len {len}: plaintext differs");
            assert_eq!(back, digest, "len {len}");
            assert_eq!(progress, expected_progress, "len {len}");
        }
    }

    #[tokio::test]
    async fn known_answer_matches_independent_implementation() {
        // Produced with Python's `cryptography` AESGCM from the format description.
        let expected = "44425357454e4331011499064a955bca8500a0a1a2a3a4a5a6\
                        1f042572d72ac0a46116af4ebde3b7e99d35e64eede5f3c5afc965a4ecc5";
        let key = counting_key();
        let mut sealer = Sealer::with_prefix(&key, [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6]);
        let mut buf = b"hello, dbswarm".to_vec();
        sealer.seal_chunk(&mut buf, true).expect("seals");
        let mut file = sealer.header.to_vec();
        file.extend_from_slice(&buf);
        assert_eq!(hex::encode(&file), expected);

        let (result, out) = decrypt(&key, &file).await;
        result.expect("decrypts");
        assert_eq!(out, b"hello, dbswarm");
    }

    #[tokio::test]
    async fn files_differ_under_the_same_key() {
        let key = counting_key();
        let (a, _) = encrypt(&key, b"same").await;
        let (b, _) = encrypt(&key, b"same").await;
        assert_ne!(a, b, "nonce prefix must be fresh per file");
    }

    #[tokio::test]
    async fn wrong_key_names_both_fingerprints() {
        let (stored, _) = encrypt(&counting_key(), b"secret").await;
        let (result, out) = decrypt(&other_key(), &stored).await;
        match result {
            Err(CryptoError::WrongKey { file_key, configured }) => {
                assert_eq!(file_key, counting_key().fingerprint());
                assert_eq!(configured, other_key().fingerprint());
                assert_eq!(file_key.len(), 16);
            }
            other => panic!("expected WrongKey, got {other:?}"),
        }
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn every_header_byte_is_protected() {
        let key = counting_key();
        let (stored, _) = encrypt(&key, &data(1000, 7)).await;
        for i in 0..HEADER_BYTES {
            let mut bad = stored.clone();
            bad[i] ^= 0x01;
            let (result, out) = decrypt(&key, &bad).await;
            assert!(out.is_empty(), "byte {i}: plaintext written");
            match (i, result) {
                (0..=7, Err(CryptoError::NotEncrypted)) => {}
                (8, Err(CryptoError::UnsupportedVersion(0))) => {}
                (9, Err(CryptoError::NotEncrypted)) => {}
                (10..=17, Err(CryptoError::WrongKey { .. })) => {}
                (18..=24, Err(CryptoError::Tampered { index: 0, offset: 25 })) => {}
                (i, other) => panic!("header byte {i}: unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn damaged_chunks_are_detected() {
        let key = counting_key();
        let plain = data(3 * CHUNK_BYTES + 5, 3);
        let (stored, _) = encrypt(&key, &plain).await;

        // A middle chunk: only chunk 0's plaintext comes out.
        let mut bad = stored.clone();
        bad[HEADER_BYTES + FRAME_BYTES + 1234] ^= 0x80;
        let (result, out) = decrypt(&key, &bad).await;
        match result {
            Err(CryptoError::Tampered { index: 1, offset }) => {
                assert_eq!(offset, (HEADER_BYTES + FRAME_BYTES) as u64)
            }
            other => panic!("expected Tampered chunk 1, got {other:?}"),
        }
        assert!(out == plain[..CHUNK_BYTES], "only chunk 0 may be written");

        // The last tag.
        let mut bad = stored.clone();
        *bad.last_mut().expect("non-empty") ^= 0x01;
        let (result, _) = decrypt(&key, &bad).await;
        assert!(
            matches!(result, Err(CryptoError::Tampered { index: 3, .. })),
            "{result:?}"
        );

        // Swapping two full chunks.
        let mut bad = stored.clone();
        let (a, b) = bad[HEADER_BYTES..].split_at_mut(FRAME_BYTES);
        a.swap_with_slice(&mut b[..FRAME_BYTES]);
        let (result, _) = decrypt(&key, &bad).await;
        assert!(
            matches!(result, Err(CryptoError::Tampered { index: 0, .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn truncation_is_detected() {
        let key = counting_key();
        let plain = data(3 * CHUNK_BYTES + 5, 4);
        let (stored, _) = encrypt(&key, &plain).await;

        // At every chunk boundary, including right after the header.
        for chunks in 0..=3 {
            let cut = HEADER_BYTES + chunks * FRAME_BYTES;
            let (result, _) = decrypt(&key, &stored[..cut]).await;
            match result {
                Err(CryptoError::Truncated { bytes }) => assert_eq!(bytes, cut as u64),
                other => panic!("cut after {chunks} chunks: got {other:?}"),
            }
        }

        // Mid-chunk.
        for cut in [
            HEADER_BYTES + FRAME_BYTES + 1,
            HEADER_BYTES + FRAME_BYTES + 500_000,
            stored.len() - 1,
            HEADER_BYTES + 3 * FRAME_BYTES + TAG_BYTES - 1,
        ] {
            let (result, _) = decrypt(&key, &stored[..cut]).await;
            assert!(
                matches!(
                    result,
                    Err(CryptoError::Tampered { .. } | CryptoError::Truncated { .. })
                ),
                "cut at {cut}: {result:?}"
            );
        }

        // Inside the header, and empty.
        let (result, _) = decrypt(&key, &stored[..HEADER_BYTES - 1]).await;
        assert!(
            matches!(result, Err(CryptoError::Truncated { bytes: 24 })),
            "{result:?}"
        );
        let (result, _) = decrypt(&key, &[]).await;
        assert!(matches!(result, Err(CryptoError::NotEncrypted)), "{result:?}");
        let (result, _) = decrypt(&key, b"plain old SQL dump, not encrypted at all").await;
        assert!(matches!(result, Err(CryptoError::NotEncrypted)), "{result:?}");
    }

    #[tokio::test]
    async fn exact_multiple_loses_its_empty_final_chunk() {
        let key = counting_key();
        let (stored, _) = encrypt(&key, &data(CHUNK_BYTES, 5)).await;
        assert_eq!(stored.len(), HEADER_BYTES + FRAME_BYTES + TAG_BYTES);
        let (result, _) = decrypt(&key, &stored[..HEADER_BYTES + FRAME_BYTES]).await;
        assert!(
            matches!(result, Err(CryptoError::Truncated { bytes }) if bytes == (HEADER_BYTES + FRAME_BYTES) as u64),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn appended_data_is_rejected() {
        let key = counting_key();
        for len in [0, 10, CHUNK_BYTES] {
            let (mut stored, _) = encrypt(&key, &data(len, 6)).await;
            stored.push(0);
            let (result, _) = decrypt(&key, &stored).await;
            assert!(
                matches!(
                    result,
                    Err(CryptoError::TrailingData | CryptoError::Tampered { .. })
                ),
                "len {len}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn full_size_final_chunk_is_accepted() {
        // Our writer never produces one, but the format allows it.
        let key = counting_key();
        let plain = data(CHUNK_BYTES, 8);
        let (mut sealer, header) = Sealer::new(&key).expect("sealer");
        let mut buf = plain.clone();
        sealer.seal_chunk(&mut buf, true).expect("seals");
        let mut file = header.to_vec();
        file.extend_from_slice(&buf);
        let (result, out) = decrypt(&key, &file).await;
        result.expect("decrypts");
        assert!(out == plain);

        file.push(1);
        let (result, _) = decrypt(&key, &file).await;
        assert!(result.is_err(), "appended byte accepted");
    }

    #[test]
    fn sealer_and_opener_enforce_their_contract() {
        let key = counting_key();
        let (mut sealer, header) = Sealer::new(&key).expect("sealer");
        let mut short = vec![1u8; 10];
        assert!(matches!(
            sealer.seal_chunk(&mut short, false),
            Err(CryptoError::Io(_))
        ));
        assert_eq!(short.len(), 10, "buffer untouched on error");
        let mut big = vec![0u8; CHUNK_BYTES + 1];
        assert!(sealer.seal_chunk(&mut big, true).is_err());

        let mut last = b"tail".to_vec();
        sealer.seal_chunk(&mut last, true).expect("seals");
        let mut again = Vec::new();
        assert!(sealer.seal_chunk(&mut again, true).is_err());

        let mut opener = Opener::new(&key, &header).expect("opener");
        let mut copy = last.clone();
        // Wrong flag fails and does not advance.
        assert!(matches!(
            opener.open_chunk(&mut copy, false),
            Err(CryptoError::Io(_))
        ));
        opener.open_chunk(&mut last, true).expect("opens");
        assert_eq!(last, b"tail");
        let mut more = vec![0u8; TAG_BYTES];
        assert!(matches!(
            opener.open_chunk(&mut more, true),
            Err(CryptoError::TrailingData)
        ));

        assert!(matches!(
            Opener::new(&key, &header[..HEADER_BYTES - 1]),
            Err(CryptoError::NotEncrypted)
        ));

        // Counter overflow.
        let mut sealer = Sealer::with_prefix(&key, [0; PREFIX_BYTES]);
        sealer.next_index = u64::from(u32::MAX) + 1;
        assert!(matches!(
            sealer.seal_chunk(&mut Vec::new(), true),
            Err(CryptoError::TooLarge)
        ));
    }

    #[test]
    fn key_parsing() {
        let hex_key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let key = BackupKey::from_text(hex_key).expect("hex");
        assert_eq!(key.fingerprint(), "99064a955bca8500");
        let upper = BackupKey::from_text(&format!("  \n{}\r\n", hex_key.to_uppercase()))
            .expect("upper-case hex with whitespace");
        assert_eq!(upper.fingerprint(), key.fingerprint());
        let b64 = BackupKey::from_text("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").expect("base64");
        assert_eq!(b64.fingerprint(), key.fingerprint());

        let debug = format!("{key:?}");
        assert!(debug.contains("99064a955bca8500"), "{debug}");
        assert!(!debug.contains("0102030405"), "{debug}");

        for (text, expect) in [
            ("", "got 0 characters"),
            (&hex_key[..63], "got 63 characters"),
            ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", "got 43 characters"),
            (&format!("{hex_key}0"), "got 65 characters"),
            (&format!("{}g", &hex_key[..63]), "character 64 is not"),
            (&format!("{}é", &hex_key[..63]), "character 64 is not"),
            ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8A", "exactly one '='"),
            ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh==", "exactly one '='"),
            (
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh-=",
                "character 43 is not",
            ),
            ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=", "unused bits"),
            (
                "AAECAwQFBgcICQoLDA0ODxAREhMU FRYXGBkaGxwdHh=",
                "character 29 is not",
            ),
        ] {
            let err = BackupKey::from_text(text).expect_err(text);
            let message = err.to_string();
            assert!(message.contains(expect), "{text:?}: {message}");
        }
    }

    #[test]
    fn key_files_and_generation() {
        let text = BackupKey::generate_text().expect("random");
        assert_eq!(text.len(), 64);
        assert_ne!(text, BackupKey::generate_text().expect("random"));

        let dir = std::env::temp_dir().join(format!("backup-crypto-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("good.key");
        std::fs::write(&good, format!("{text}\n")).expect("write");
        let key = BackupKey::from_file(&good).expect("reads key file");
        assert_eq!(
            key.fingerprint(),
            BackupKey::from_text(&text).expect("parses").fingerprint()
        );

        let bad = dir.join("bad.key");
        std::fs::write(&bad, "short").expect("write");
        let message = BackupKey::from_file(&bad).expect_err("bad key").to_string();
        assert!(
            message.contains("bad.key") && message.contains("got 5 characters"),
            "{message}"
        );

        let binary = dir.join("binary.key");
        std::fs::write(&binary, [0xffu8, 0xfe]).expect("write");
        let message = BackupKey::from_file(&binary).expect_err("binary").to_string();
        assert!(
            message.contains("binary.key") && message.contains("UTF-8"),
            "{message}"
        );

        let missing = dir.join("missing.key");
        let message = BackupKey::from_file(&missing).expect_err("missing").to_string();
        assert!(
            message.starts_with("cannot read backup key file ") && message.contains("missing.key"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn manifest_signatures() {
        let key = counting_key();
        let signature = key.sign(b"manifest");
        // HMAC-SHA256 computed independently (Python hmac/hashlib).
        assert_eq!(
            signature,
            "c0b6aa11a2c0067d4d22730415c5822a865874d70d42d560e7e0fa8fed0c567e"
        );
        assert!(key.verify_signature(b"manifest", &signature));
        assert!(!key.verify_signature(b"manifesT", &signature));
        assert!(!other_key().verify_signature(b"manifest", &signature));
        let mut flipped = signature.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert!(!key.verify_signature(b"manifest", &flipped));
        assert!(!key.verify_signature(b"manifest", "not hex"));
        assert!(!key.verify_signature(b"manifest", ""));
        assert!(!key.verify_signature(b"manifest", &signature[..62]));
    }

    /// Callers run these inside `tokio::spawn`, which needs `Send` futures.
    #[test]
    fn stream_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let key = counting_key();
        let mut reader: &[u8] = &[];
        let mut writer = Vec::new();
        let mut progress = |_| {};
        let future = encrypt_stream(&key, &mut reader, &mut writer, &mut progress);
        assert_send(&future);
        drop(future);
        let future = decrypt_stream(&key, &mut reader, &mut writer, &mut progress);
        assert_send(&future);
    }

    #[test]
    fn sha256_hex_known_value() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
