//! What goes on the wire besides the object: server-side encryption
//! (`walarch.s3_sse`, `walarch.s3_sse_kms_key_id`,
//! `walarch.s3_sse_customer_key_file`), the storage class of large objects
//! (`walarch.s3_storage_class`) and the proxy the environment names.
//! Decided here in plain Rust; `bucket.rs` hands them to object_store.

use std::fmt;

use base64::Engine as _;

use walarch_core::destination::destination_setting::credentials_file_problem;
use walarch_core::wal::checksum::{sha256, to_hex};
use walarch_core::wal::walname::{stored_form, WalFileKind, WalFileName};

/// An SSE-C key: 256 bits, kept base64-encoded (what the headers carry).
/// Its Debug shows a digest only (settings are hashed through Debug to
/// notice a changed key; they must never print it).
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey(String);

impl CustomerKey {
    pub fn from_bytes(key: &[u8; 32]) -> CustomerKey {
        CustomerKey(base64::engine::general_purpose::STANDARD.encode(key))
    }

    pub(crate) fn base64(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = to_hex(&sha256(self.0.as_bytes()));
        write!(f, "CustomerKey(sha256 {})", &d[..16])
    }
}

/// Server-side encryption of what is stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sse {
    /// Nothing asked: the bucket's default encryption applies.
    #[default]
    None,
    /// SSE-S3 (`AES256`): keys managed by the store.
    Aes256,
    /// SSE-KMS (`aws:kms`); without a key id S3 uses the account's AWS
    /// managed key `aws/s3`, as the AWS CLI does.
    Kms { key_id: Option<String> },
    /// SSE-C: the key is sent with every write and every read.
    Customer(CustomerKey),
}

/// `walarch.s3_sse`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseMode {
    None,
    Aes256,
    Kms,
    Customer,
}

impl SseMode {
    /// The setting's value (case does not matter).
    pub fn parse(v: &str) -> Option<SseMode> {
        match v.to_ascii_lowercase().as_str() {
            "" | "none" => Some(SseMode::None),
            "aes256" => Some(SseMode::Aes256),
            "aws:kms" => Some(SseMode::Kms),
            "sse-c" => Some(SseMode::Customer),
            _ => None,
        }
    }
}

pub const SSE_VALUES_HINT: &str = "Use none, AES256, aws:kms or sse-c.";

/// Checks `walarch.s3_sse`.
pub fn check_sse(v: &str) -> Result<(), String> {
    SseMode::parse(v)
        .map(|_| ())
        .ok_or_else(|| format!("\"{v}\" is not a server-side encryption. {SSE_VALUES_HINT}"))
}

/// The encryption the three settings ask for, or why they do not fit
/// together (a DETAIL naming the settings). `key_file` is read (and its
/// permissions checked) only for `sse-c`.
pub fn sse_from_settings(
    mode: &str,
    kms_key_id: Option<&str>,
    key_file: Option<&str>,
) -> Result<Sse, String> {
    let mode = SseMode::parse(mode).ok_or_else(|| {
        format!("walarch.s3_sse is \"{mode}\", not a server-side encryption. {SSE_VALUES_HINT}")
    })?;
    let kms_key_id = kms_key_id.filter(|k| !k.is_empty());
    let key_file = key_file.filter(|k| !k.is_empty());
    if kms_key_id.is_some() && mode != SseMode::Kms {
        return Err(
            "walarch.s3_sse_kms_key_id is set but walarch.s3_sse is not aws:kms: set walarch.s3_sse = 'aws:kms', or empty walarch.s3_sse_kms_key_id."
                .into(),
        );
    }
    if key_file.is_some() && mode != SseMode::Customer {
        return Err(
            "walarch.s3_sse_customer_key_file is set but walarch.s3_sse is not sse-c: set walarch.s3_sse = 'sse-c', or empty walarch.s3_sse_customer_key_file."
                .into(),
        );
    }
    Ok(match mode {
        SseMode::None => Sse::None,
        SseMode::Aes256 => Sse::Aes256,
        SseMode::Kms => Sse::Kms {
            key_id: kms_key_id.map(str::to_string),
        },
        SseMode::Customer => Sse::Customer(read_customer_key_file(key_file.ok_or_else(
            || {
                "walarch.s3_sse is sse-c but walarch.s3_sse_customer_key_file is not set: name a file holding the 256-bit key (32 bytes, or their base64 on one line)."
                    .to_string()
            },
        )?)?),
    })
}

/// Checks a KMS key id (no spaces or control characters: it is a header).
pub fn check_kms_key_id(v: &str) -> Result<(), String> {
    if v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("A KMS key id (its id, alias or ARN) has no spaces or control characters.".into())
    }
}

/// What an SSE-C key file may hold: exactly the 32 bytes of the key, or
/// their standard base64 (44 characters) on one line (`openssl rand
/// -base64 32`, what pgBackRest's `repo-s3-sse-customer-key` takes). The
/// key itself never appears in an error.
pub fn parse_customer_key(content: &[u8]) -> Option<CustomerKey> {
    if let Ok(raw) = <[u8; 32]>::try_from(content) {
        return Some(CustomerKey::from_bytes(&raw));
    }
    let text = std::str::from_utf8(content).ok()?.trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    let raw = <[u8; 32]>::try_from(raw.as_slice()).ok()?;
    Some(CustomerKey::from_bytes(&raw))
}

/// Reads an SSE-C key file, which must be protected like the credentials
/// file (`credentials_file_problem`).
pub fn read_customer_key_file(path: &str) -> Result<CustomerKey, String> {
    use std::os::unix::fs::MetadataExt;
    let could_not = |e: &std::io::Error| {
        format!(
            "Could not read \"{path}\": {}.",
            walarch_core::support::error::os_message(e)
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| could_not(&e))?;
    // SAFETY: geteuid() cannot fail.
    let euid = unsafe { libc::geteuid() };
    if let Some(problem) = credentials_file_problem(path, meta.uid(), meta.mode(), euid) {
        return Err(problem);
    }
    let content = std::fs::read(path).map_err(|e| could_not(&e))?;
    parse_customer_key(&content).ok_or_else(|| {
        format!(
            "\"{path}\" holds no SSE-C key: it must hold the key's 32 bytes, or their base64 (44 characters) on one line, e.g. from openssl rand -base64 32."
        )
    })
}

/// Checks `walarch.s3_storage_class`: empty (the bucket's default) or a
/// class name as S3 spells them (STANDARD_IA, INTELLIGENT_TIERING,
/// GLACIER_IR, ...).
pub fn check_storage_class(v: &str) -> Result<(), String> {
    if v.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        Ok(())
    } else {
        Err(format!(
            "\"{v}\" is not a storage class: use the name S3 gives it, in capitals (STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR...)."
        ))
    }
}

/// Whether an object named `name` is stored in `walarch.s3_storage_class`:
/// WAL segments and `.partial` files (plain or compressed) and base backup
/// tars, which make the archive's bulk. History and backup history files,
/// checksum records, markers, `backup.json` and manifests stay in the
/// bucket's default class, so that the small files every restore and every
/// retention pass reads are cheap and immediate to read.
pub fn takes_storage_class(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    if let Some((wal, _)) = stored_form(file) {
        return matches!(
            WalFileName::parse(wal).map(|w| w.kind),
            Some(WalFileKind::Segment | WalFileKind::Partial)
        );
    }
    name.contains('/') && file.contains(".tar")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn storage_class_goes_to_segments_and_tars_only() {
        for n in [
            "000000010000000000000001",
            "000000010000000000000001.zst",
            "000000010000000000000001.partial",
            "000000010000000000000001.partial.zst",
            "backups/L/base.tar",
            "backups/L/base.tar.zst",
            "backups/L/16384.tar.gz",
        ] {
            assert!(takes_storage_class(n), "{n}");
        }
        for n in [
            "00000002.history",
            "000000010000000000000001.00000028.backup",
            "000000010000000000000001.sha256",
            "000000010000000000000001.zst.sha256",
            "backups/L/backup.json",
            "backups/L/backup_manifest",
            "backups/L/backup.started",
            "DROPPED-000000010000000000000001",
            "base.tar",
        ] {
            assert!(!takes_storage_class(n), "{n}");
        }
        assert_eq!(check_storage_class("STANDARD_IA"), Ok(()));
        assert_eq!(check_storage_class(""), Ok(()));
        assert!(check_storage_class("standard ia").is_err());
    }

    #[test]
    fn sse_settings_fit_together() {
        assert_eq!(sse_from_settings("none", None, None), Ok(Sse::None));
        assert_eq!(sse_from_settings("", Some(""), Some("")), Ok(Sse::None));
        assert_eq!(sse_from_settings("AES256", None, None), Ok(Sse::Aes256));
        assert_eq!(sse_from_settings("aes256", None, None), Ok(Sse::Aes256));
        // The account's aws/s3 key, as AWS does without a key id.
        assert_eq!(
            sse_from_settings("aws:kms", None, None),
            Ok(Sse::Kms { key_id: None })
        );
        assert_eq!(
            sse_from_settings("aws:kms", Some("alias/wal"), None),
            Ok(Sse::Kms {
                key_id: Some("alias/wal".into())
            })
        );
        let e = sse_from_settings("AES256", Some("alias/wal"), None).unwrap_err();
        assert!(e.contains("walarch.s3_sse_kms_key_id is set"), "{e}");
        let e = sse_from_settings("sse-c", None, None).unwrap_err();
        assert!(
            e.contains("walarch.s3_sse_customer_key_file is not set"),
            "{e}"
        );
        let e = sse_from_settings("none", None, Some("/k")).unwrap_err();
        assert!(e.contains("is not sse-c"), "{e}");
        let e = sse_from_settings("des", None, None).unwrap_err();
        assert!(e.contains("not a server-side encryption"), "{e}");
        assert!(check_sse("sse-c").is_ok() && check_sse("SSE-KMS").is_err());
        assert!(check_kms_key_id("arn:aws:kms:eu-west-1:1:key/ab-cd").is_ok());
        assert!(check_kms_key_id("a b").is_err());
    }

    #[test]
    fn customer_key_file_formats_and_permissions() {
        let d = std::env::temp_dir().join(format!("walarch-ssec-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let key = [7u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let expected = CustomerKey::from_bytes(&key);
        let write = |name: &str, content: &[u8], mode: u32| {
            let p = d.join(name);
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p.to_str().unwrap().to_string()
        };
        let raw = write("raw", &key, 0o600);
        assert_eq!(read_customer_key_file(&raw), Ok(expected.clone()));
        let text = write("b64", format!("{b64}\n").as_bytes(), 0o600);
        assert_eq!(read_customer_key_file(&text), Ok(expected.clone()));
        assert_eq!(
            sse_from_settings("sse-c", None, Some(&text)),
            Ok(Sse::Customer(expected.clone()))
        );
        // Too open: refused with the rule, like the credentials file.
        let open = write("open", format!("{b64}\n").as_bytes(), 0o644);
        let e = read_customer_key_file(&open).unwrap_err();
        assert!(e.contains("group or other access"), "{e}");
        // 16 bytes (AES-128) or garbage: no key; the content is not shown.
        let short = write(
            "short",
            base64::engine::general_purpose::STANDARD
                .encode([9u8; 16])
                .as_bytes(),
            0o600,
        );
        let e = read_customer_key_file(&short).unwrap_err();
        assert!(e.contains("holds no SSE-C key"), "{e}");
        assert!(!e.contains("CQkJ"), "{e}");
        assert!(read_customer_key_file(&d.join("none").to_string_lossy()).is_err());
        // Debug never shows the key.
        let shown = format!("{expected:?}");
        assert!(!shown.contains(&b64), "{shown}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
