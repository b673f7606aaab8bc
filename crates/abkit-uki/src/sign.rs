//! Authenticode signing and verification of loaders, for UEFI Secure Boot.
//!
//! A signature is a PKCS#7 `SignedData` whose content is an Authenticode
//! `SpcIndirectDataContent` carrying the file's Authenticode SHA-256 digest
//! ([`authenticode_sha256`]); it sits in a `WIN_CERTIFICATE` of type
//! `WIN_CERT_TYPE_PKCS_SIGNED_DATA` (0x0002) in the PE certificate table,
//! as `sbsign` writes it. The signer info has the signed attributes
//! contentType, `SpcSpOpusInfo` (empty) and messageDigest, and an RSA
//! PKCS#1 v1.5 signature over SHA-256; the signer's certificate is embedded.
//!
//! **Crates.** The ASN.1 structures come from RustCrypto: `cms` (the PKCS#7
//! / CMS types; its builder is not used because it writes a CMS version 3
//! `SignedData` with the content wrapped in an OCTET STRING, while
//! Authenticode wants PKCS#7 version 1 with the `SpcIndirectDataContent`
//! SEQUENCE as the content itself), `x509-cert`, `der`, `spki`, and `rsa`
//! for PKCS#1 v1.5. Pure Rust, so `abkit` stays a static binary (the VM tests
//! run it inside the guest); the `openssl` crate would need libssl at run
//! time and has no binding for PKCS#7 content of a custom type. `rsa` 0.9
//! has a known timing side channel (RUSTSEC-2023-0071, "Marvin"): signing
//! runs on a build host with a local key, where an attacker cannot time
//! many signatures; verification uses only public keys.
//!
//! **Table order.** Signing keeps every entry already in the table (another
//! signature, as sbsign adds one) and appends the new one; a slot stamp is
//! taken out first and appended again after the signature ("stamp after
//! sign"), so the signature entries come first. EDK2 checks every PKCS#7
//! entry and skips the stamp; sbverify 0.9.4 accepts the file when any
//! signature verifies but stops at the first entry that is not PKCS#7, so a
//! signature behind the stamp would be invisible to it (tests/uki_sign.rs).
//!
//! **Verification** ([`verify`]) follows EDK2's `DxeImageVerificationLib`
//! rather than OpenSSL's chain rules: an entry is trusted when its digest
//! equals the file's, its signature verifies with the signer certificate,
//! and that certificate, or one on the chain the entry embeds, is one of the
//! trusted certificates or is directly signed by one. Validity dates are not
//! checked (firmware has no trusted clock). Only SHA-256 digests and RSA
//! keys are understood; other entries are reported as unsupported.

use abkit_loader_core::pe::PeImage;
use abkit_loader_core::stamp::{
    self, StampError,
    layout::{CERT_ALIGN, WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA},
};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, DecodePem, Encode, Reader, Sequence, SliceReader};
use rsa::pkcs1v15::Pkcs1v15Sign;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;

use crate::{authenticode_sha256, pe_checksum, read_stamp, remove_stamp};

/// Object identifiers used here.
pub mod oid {
    use der::asn1::ObjectIdentifier as Oid;
    pub const SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
    pub const SPC_INDIRECT_DATA: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.2.1.4");
    pub const SPC_PE_IMAGE_DATA: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.2.1.15");
    pub const SPC_SP_OPUS_INFO: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.2.1.12");
    pub const CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
    pub const MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
    pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    pub const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
}

/// Why a file cannot be signed, or a key or certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read the key (PEM or DER, PKCS#8 or PKCS#1 RSA): {0}")]
    Key(String),
    #[error("cannot read the certificate (PEM or DER X.509): {0}")]
    Cert(String),
    #[error("the certificate's public key is not an RSA key: {0}")]
    CertNotRsa(String),
    #[error("the key does not belong to the certificate (their public keys differ)")]
    KeyCertMismatch,
    #[error(transparent)]
    Table(#[from] StampError),
    #[error("cannot encode the signature: {0}")]
    Encode(#[from] der::Error),
    #[error("RSA signing failed: {0}")]
    Rsa(#[from] rsa::Error),
}

/// An RSA key with its X.509 certificate: what signs.
#[derive(Clone)]
pub struct SigningKey {
    key: RsaPrivateKey,
    cert: Certificate,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("subject", &self.cert.tbs_certificate.subject.to_string())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// From the bytes of a key file (PEM or DER; PKCS#8 `PRIVATE KEY`, as
    /// `openssl req -newkey` writes, or PKCS#1 `RSA PRIVATE KEY`) and of a
    /// certificate file (PEM or DER). Refuses a key that is not the
    /// certificate's.
    pub fn new(key: &[u8], cert: &[u8]) -> Result<Self, SignError> {
        let key = parse_key(key)?;
        let cert = parse_certificate(cert)?;
        if public_key(&cert)? != RsaPublicKey::from(&key) {
            return Err(SignError::KeyCertMismatch);
        }
        Ok(Self { key, cert })
    }

    /// The certificate's subject, RFC 4514 style (`CN=...`).
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }
}

fn parse_key(bytes: &[u8]) -> Result<RsaPrivateKey, SignError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let text = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.contains("-----BEGIN"));
    let result = match text {
        Some(t) if t.contains("BEGIN RSA PRIVATE KEY") => {
            RsaPrivateKey::from_pkcs1_pem(t).map_err(|e| e.to_string())
        }
        Some(t) => RsaPrivateKey::from_pkcs8_pem(t).map_err(|e| e.to_string()),
        None => RsaPrivateKey::from_pkcs8_der(bytes)
            .or_else(|_| RsaPrivateKey::from_pkcs1_der(bytes))
            .map_err(|e| e.to_string()),
    };
    result.map_err(SignError::Key)
}

/// A certificate from a PEM or DER file.
pub fn parse_certificate(bytes: &[u8]) -> Result<Certificate, SignError> {
    let result =
        if bytes.starts_with(b"-----BEGIN") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            let text = std::str::from_utf8(bytes).map_err(|e| SignError::Cert(e.to_string()))?;
            let start = text.find("-----BEGIN").unwrap_or(0);
            Certificate::from_pem(&text[start..])
        } else {
            Certificate::from_der(bytes)
        };
    result.map_err(|e| SignError::Cert(e.to_string()))
}

/// A certificate as firmware stores it: its DER bytes and its notBefore in
/// UTC (year, month, day, hour, minute, second), for `abkit image build
/// --secure-boot`.
pub fn certificate_for_firmware(cert: &Certificate) -> Result<(Vec<u8>, [u16; 6]), SignError> {
    let der = cert.to_der()?;
    let t = cert.tbs_certificate.validity.not_before.to_date_time();
    let when = [
        t.year(),
        t.month().into(),
        t.day().into(),
        t.hour().into(),
        t.minutes().into(),
        t.seconds().into(),
    ];
    Ok((der, when))
}

fn public_key(cert: &Certificate) -> Result<RsaPublicKey, SignError> {
    let spki = cert.tbs_certificate.subject_public_key_info.to_der()?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| SignError::CertNotRsa(e.to_string()))
}

/// `SpcIndirectDataContent` (Authenticode): what the signature covers.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct SpcIndirectDataContent {
    data: SpcAttributeTypeAndOptionalValue,
    message_digest: DigestInfo,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct SpcAttributeTypeAndOptionalValue {
    kind: ObjectIdentifier,
    #[asn1(optional = "true")]
    value: Option<Any>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct DigestInfo {
    algorithm: AlgorithmIdentifierOwned,
    digest: OctetString,
}

fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: oid::SHA256,
        parameters: Some(Any::null()),
    }
}

/// `SpcPeImageData` as every signer writes it: no flags, and the file link
/// `<<<Obsolete>>>` as a BMPString (`[0] { [2] { [0] IMPLICIT BMPString } }`).
fn spc_pe_image_data() -> Result<Any, der::Error> {
    let text: Vec<u8> = "<<<Obsolete>>>"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    let wrap = |tag: u8, inner: &[u8]| {
        let mut v = vec![tag, inner.len() as u8];
        v.extend_from_slice(inner);
        v
    };
    let link = wrap(0xa0, &wrap(0xa2, &wrap(0x80, &text)));
    let mut value = vec![0x03, 0x01, 0x00]; // flags: empty BIT STRING
    value.extend_from_slice(&link);
    Any::from_der(&wrap(0x30, &value))
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, der::Error> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

/// The DER `ContentInfo` (PKCS#7 `SignedData`) signing a file whose
/// Authenticode SHA-256 digest is `digest`.
pub fn signature_for_digest(digest: &[u8; 32], key: &SigningKey) -> Result<Vec<u8>, SignError> {
    let idc = SpcIndirectDataContent {
        data: SpcAttributeTypeAndOptionalValue {
            kind: oid::SPC_PE_IMAGE_DATA,
            value: Some(spc_pe_image_data()?),
        },
        message_digest: DigestInfo {
            algorithm: sha256_algorithm(),
            digest: OctetString::new(digest.to_vec())?,
        },
    };
    let content = Any::encode_from(&idc)?;
    // PKCS#7: the digest covers the content's value octets, not its tag and length.
    let content_digest = Sha256::digest(content.value());
    let signed_attrs = SetOfVec::try_from(vec![
        attribute(
            oid::CONTENT_TYPE,
            Any::encode_from(&oid::SPC_INDIRECT_DATA)?,
        )?,
        attribute(oid::SPC_SP_OPUS_INFO, Any::from_der(&[0x30, 0x00])?)?,
        attribute(
            oid::MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(content_digest.to_vec())?)?,
        )?,
    ])?;
    let attrs_digest = Sha256::digest(signed_attrs.to_der()?);
    let signature = key
        .key
        .sign(Pkcs1v15Sign::new::<rsa::sha2::Sha256>(), &attrs_digest)?;
    let tbs = &key.cert.tbs_certificate;
    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer.clone(),
            serial_number: tbs.serial_number.clone(),
        }),
        digest_alg: sha256_algorithm(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: oid::RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256_algorithm()])?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oid::SPC_INDIRECT_DATA,
            econtent: Some(content),
        },
        certificates: Some(CertificateSet(SetOfVec::try_from(vec![
            CertificateChoices::Certificate(key.cert.clone()),
        ])?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer])?),
    };
    let info = ContentInfo {
        content_type: oid::SIGNED_DATA,
        content: Any::encode_from(&signed_data)?,
    };
    Ok(info.to_der()?)
}

/// `pe` signed with `key`: a PKCS#7 entry appended to the certificate table
/// after the entries already there (other signatures are kept), a slot
/// stamp moved behind it, the directory entry and the PE checksum updated.
/// A file without a table is first padded with zeros to 8 bytes (the table
/// must start aligned); the padding is part of the signed digest, as with
/// sbsign.
pub fn sign(pe: &[u8], key: &SigningKey) -> Result<Vec<u8>, SignError> {
    let slot = read_stamp(pe)?;
    let mut out = match slot {
        Some(_) => remove_stamp(pe)?,
        None => pe.to_vec(),
    };
    let image = PeImage::parse(&out).map_err(StampError::from)?;
    let dir_at = image
        .security_directory_offset()
        .ok_or(StampError::NoSecurityDirectory)?;
    let checksum_at = image.checksum_offset();
    let table_start = match stamp::table_of(&image, out.len() as u64)? {
        Some(range) => range.start as usize,
        None => out.len().next_multiple_of(CERT_ALIGN),
    };
    out.resize(out.len().max(table_start), 0);
    let digest = authenticode_sha256(&out)?;
    let der = signature_for_digest(&digest, key)?;

    let length = u32::try_from(8 + der.len()).map_err(|_| StampError::TooLarge)?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    out.extend_from_slice(&der);
    out.resize(out.len().next_multiple_of(CERT_ALIGN), 0);
    let address = u32::try_from(table_start).map_err(|_| StampError::TooLarge)?;
    let size = u32::try_from(out.len() - table_start).map_err(|_| StampError::TooLarge)?;
    out[dir_at..dir_at + 4].copy_from_slice(&address.to_le_bytes());
    out[dir_at + 4..dir_at + 8].copy_from_slice(&size.to_le_bytes());
    let checksum = pe_checksum(&out, checksum_at);
    out[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_le_bytes());
    match slot {
        Some(slot) => Ok(crate::stamp(&out, slot)?),
        None => Ok(out),
    }
}

/// Why one signature entry is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "problem", content = "detail", rename_all = "kebab-case")]
pub enum SignatureProblem {
    #[error("malformed PKCS#7: {0}")]
    Malformed(String),
    #[error("not an Authenticode signature: {0}")]
    NotAuthenticode(String),
    #[error("unsupported algorithm {0} (only SHA-256 with RSA is understood)")]
    Unsupported(String),
    #[error("the signed digest {signed} is not the file's Authenticode digest")]
    DigestMismatch { signed: String },
    #[error("the signed attributes' message digest does not match the signed content")]
    ContentDigestMismatch,
    #[error("the signer's certificate is not in the signature")]
    SignerCertMissing,
    #[error("the RSA signature does not verify with the signer's certificate")]
    BadSignature,
    #[error("the signer's certificate does not chain to a trusted certificate")]
    Untrusted,
}

/// One PKCS#7 entry of a certificate table, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureCheck {
    /// Offset of the entry in the certificate table.
    pub table_offset: usize,
    /// The signer certificate's subject and issuer, when they could be read.
    pub signer: Option<String>,
    pub issuer: Option<String>,
    /// `None`: the signature is valid and trusted.
    pub problem: Option<SignatureProblem>,
}

/// Every signature of a file, checked against a set of trusted certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// The Authenticode SHA-256 digest of the file (hex).
    pub authenticode_sha256: String,
    /// The PKCS#7 entries, in table order; other entries (a slot stamp) are
    /// not listed.
    pub signatures: Vec<SignatureCheck>,
}

impl Verification {
    /// True when at least one signature is valid and trusted, as Secure Boot
    /// with these certificates in `db` (and an empty `dbx`) would accept it.
    pub fn trusted(&self) -> bool {
        self.signatures.iter().any(|s| s.problem.is_none())
    }
}

/// Checks every PKCS#7 signature entry of `pe` against `trusted`. Errors
/// only when the file or its certificate table cannot be read; a bad
/// signature is a [`SignatureCheck`] with a problem.
pub fn verify(pe: &[u8], trusted: &[Certificate]) -> Result<Verification, StampError> {
    let digest = authenticode_sha256(pe)?;
    let image = PeImage::parse(pe)?;
    let mut signatures = Vec::new();
    if let Some(range) = stamp::table_of(&image, pe.len() as u64)? {
        for entry in stamp::entries(&pe[range.start as usize..]) {
            let entry = entry?;
            if entry.cert_type != WIN_CERT_TYPE_PKCS_SIGNED_DATA {
                continue;
            }
            let (signer, issuer, result) = check_entry(&entry.bytes[8..], &digest, trusted);
            signatures.push(SignatureCheck {
                table_offset: entry.offset,
                signer,
                issuer,
                problem: result.err(),
            });
        }
    }
    Ok(Verification {
        authenticode_sha256: hex(&digest),
        signatures,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type Checked = (Option<String>, Option<String>, Result<(), SignatureProblem>);

fn check_entry(der: &[u8], digest: &[u8; 32], trusted: &[Certificate]) -> Checked {
    let malformed = |e: der::Error| SignatureProblem::Malformed(e.to_string());
    let parsed = (|| {
        // Signers may pad inside dwLength: read one value, allow zeros after.
        let mut reader = SliceReader::new(der)?;
        let info = ContentInfo::decode(&mut reader)?;
        let rest = reader.read_slice(reader.remaining_len())?;
        if rest.iter().any(|&b| b != 0) {
            return Err(der::Error::from(der::ErrorKind::TrailingData {
                decoded: (der.len() - rest.len()).try_into()?,
                remaining: rest.len().try_into()?,
            }));
        }
        Ok(info)
    })();
    let info = match parsed {
        Ok(info) => info,
        Err(e) => return (None, None, Err(malformed(e))),
    };
    if info.content_type != oid::SIGNED_DATA {
        let why = format!("content type {} is not signedData", info.content_type);
        return (None, None, Err(SignatureProblem::NotAuthenticode(why)));
    }
    let signed: SignedData = match info.content.decode_as() {
        Ok(s) => s,
        Err(e) => return (None, None, Err(malformed(e))),
    };
    let certs: Vec<&Certificate> = signed
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|c| match c {
            CertificateChoices::Certificate(c) => Some(c),
            CertificateChoices::Other(_) => None,
        })
        .collect();
    let Some(si) = signed
        .signer_infos
        .0
        .iter()
        .next()
        .filter(|_| signed.signer_infos.0.len() == 1)
    else {
        let why = format!("{} signer infos, not 1", signed.signer_infos.0.len());
        return (None, None, Err(SignatureProblem::NotAuthenticode(why)));
    };
    let signer_cert = match &si.sid {
        SignerIdentifier::IssuerAndSerialNumber(id) => certs.iter().copied().find(|c| {
            c.tbs_certificate.issuer == id.issuer
                && c.tbs_certificate.serial_number == id.serial_number
        }),
        SignerIdentifier::SubjectKeyIdentifier(_) => None,
    };
    let names = signer_cert.map(|c| {
        (
            c.tbs_certificate.subject.to_string(),
            c.tbs_certificate.issuer.to_string(),
        )
    });
    let (subject, issuer) = names.unzip();
    let result = check_signed(&signed, si, signer_cert, &certs, digest, trusted);
    (subject, issuer, result)
}

fn check_signed(
    signed: &SignedData,
    si: &SignerInfo,
    signer_cert: Option<&Certificate>,
    certs: &[&Certificate],
    digest: &[u8; 32],
    trusted: &[Certificate],
) -> Result<(), SignatureProblem> {
    let malformed = |e: der::Error| SignatureProblem::Malformed(e.to_string());
    let encap = &signed.encap_content_info;
    if encap.econtent_type != oid::SPC_INDIRECT_DATA {
        let why = format!("content type {}", encap.econtent_type);
        return Err(SignatureProblem::NotAuthenticode(why));
    }
    let content = encap
        .econtent
        .as_ref()
        .ok_or_else(|| SignatureProblem::NotAuthenticode("no content".into()))?;
    let idc: SpcIndirectDataContent = content.decode_as().map_err(malformed)?;
    if idc.message_digest.algorithm.oid != oid::SHA256 {
        return Err(SignatureProblem::Unsupported(
            idc.message_digest.algorithm.oid.to_string(),
        ));
    }
    if idc.message_digest.digest.as_bytes() != digest {
        return Err(SignatureProblem::DigestMismatch {
            signed: hex(idc.message_digest.digest.as_bytes()),
        });
    }
    if si.digest_alg.oid != oid::SHA256 {
        return Err(SignatureProblem::Unsupported(si.digest_alg.oid.to_string()));
    }
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| SignatureProblem::NotAuthenticode("no signed attributes".into()))?;
    let attr = |oid: ObjectIdentifier| {
        attrs
            .iter()
            .find(|a| a.oid == oid)
            .and_then(|a| a.values.iter().next())
    };
    let content_type = attr(oid::CONTENT_TYPE)
        .and_then(|v| v.decode_as::<ObjectIdentifier>().ok())
        .ok_or_else(|| SignatureProblem::NotAuthenticode("no contentType attribute".into()))?;
    if content_type != oid::SPC_INDIRECT_DATA {
        return Err(SignatureProblem::NotAuthenticode(format!(
            "contentType attribute {content_type}"
        )));
    }
    let message_digest = attr(oid::MESSAGE_DIGEST)
        .and_then(|v| v.decode_as::<OctetString>().ok())
        .ok_or_else(|| SignatureProblem::NotAuthenticode("no messageDigest attribute".into()))?;
    if message_digest.as_bytes() != Sha256::digest(content.value()).as_slice() {
        return Err(SignatureProblem::ContentDigestMismatch);
    }
    let signer_cert = signer_cert.ok_or(SignatureProblem::SignerCertMissing)?;
    let sig_alg = &si.signature_algorithm.oid;
    if *sig_alg != oid::RSA_ENCRYPTION && *sig_alg != oid::SHA256_WITH_RSA {
        return Err(SignatureProblem::Unsupported(sig_alg.to_string()));
    }
    let key = public_key(signer_cert).map_err(|e| SignatureProblem::Unsupported(e.to_string()))?;
    let attrs_digest = Sha256::digest(attrs.to_der().map_err(malformed)?);
    key.verify(
        Pkcs1v15Sign::new::<rsa::sha2::Sha256>(),
        &attrs_digest,
        si.signature.as_bytes(),
    )
    .map_err(|_| SignatureProblem::BadSignature)?;
    if chains_to(signer_cert, certs, trusted) {
        Ok(())
    } else {
        Err(SignatureProblem::Untrusted)
    }
}

/// True when `cert` is trusted, signed by a trusted certificate, or signed
/// (through the embedded `certs`, at most 8 links) by one that is.
fn chains_to(cert: &Certificate, certs: &[&Certificate], trusted: &[Certificate]) -> bool {
    let mut current = cert;
    for _ in 0..8 {
        if trusted.iter().any(|t| t == current) {
            return true;
        }
        let issued_by = |issuer: &Certificate| {
            issuer.tbs_certificate.subject == current.tbs_certificate.issuer
                && signed_by(current, issuer)
        };
        if trusted.iter().any(issued_by) {
            return true;
        }
        match certs
            .iter()
            .copied()
            .find(|c| *c != current && issued_by(c))
        {
            Some(next) => current = next,
            None => return false,
        }
    }
    false
}

/// True when `issuer`'s RSA key verifies `cert`'s sha256WithRSAEncryption signature.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    if cert.signature_algorithm.oid != oid::SHA256_WITH_RSA {
        return false;
    }
    let (Ok(key), Ok(tbs), Some(signature)) = (
        public_key(issuer),
        cert.tbs_certificate.to_der(),
        cert.signature.as_bytes(),
    ) else {
        return false;
    };
    key.verify(
        Pkcs1v15Sign::new::<rsa::sha2::Sha256>(),
        &Sha256::digest(tbs),
        signature,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::minimal_stub;
    use crate::{Slot, UkiParts, build};

    /// A fresh self-signed RSA-2048 key and certificate from openssl (PEM).
    fn key_pair(cn: &str) -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"])
            .args(["-days", "1", "-subj", &format!("/CN={cn}/")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success());
        (std::fs::read(key).unwrap(), std::fs::read(cert).unwrap())
    }

    fn uki() -> Vec<u8> {
        let kernel = vec![0x4b; 3000];
        let parts = UkiParts {
            linux: &kernel,
            ..UkiParts::default()
        };
        build(&minimal_stub(), &parts).unwrap()
    }

    #[test]
    fn sign_verify_round_trip_with_padding_stamp_and_strangers() {
        let (key, cert) = key_pair("unit db");
        let signer = SigningKey::new(&key, &cert).unwrap();
        let trusted = [parse_certificate(&cert).unwrap()];

        // Unsigned: nothing to trust, no error.
        let plain = uki();
        let none = verify(&plain, &trusted).unwrap();
        assert!(none.signatures.is_empty() && !none.trusted());

        // An unaligned file is padded before its table; the padding is signed.
        let mut odd = plain.clone();
        odd.extend_from_slice(b"xyz");
        let signed = sign(&odd, &signer).unwrap();
        let check = verify(&signed, &trusted).unwrap();
        assert!(check.trusted(), "{check:?}");
        assert_eq!(check.signatures[0].signer.as_deref(), Some("CN=unit db"));
        let info = crate::inspect(&signed).unwrap();
        assert_eq!(info.checksum_stored, info.checksum_computed);

        // A stamp survives signing and stays last.
        let stamped = crate::stamp(&plain, Slot::A).unwrap();
        let signed = sign(&stamped, &signer).unwrap();
        assert_eq!(read_stamp(&signed), Ok(Some(Slot::A)));
        assert!(verify(&signed, &trusted).unwrap().trusted());
        assert_eq!(
            &signed[signed.len() - 32..],
            &stamp::encode_stamp(Slot::A)[..]
        );

        // Another certificate is not trusted; a key from elsewhere is refused.
        let (other_key, other_cert) = key_pair("unit stranger");
        let other = [parse_certificate(&other_cert).unwrap()];
        let check = verify(&signed, &other).unwrap();
        assert_eq!(
            check.signatures[0].problem,
            Some(SignatureProblem::Untrusted)
        );
        assert!(matches!(
            SigningKey::new(&other_key, &cert),
            Err(SignError::KeyCertMismatch)
        ));
    }

    #[test]
    fn certificates_signed_by_a_trusted_one_are_trusted() {
        // db holds a CA; the loader is signed by a leaf the CA issued.
        let dir = tempfile::tempdir().unwrap();
        let (ca_key, ca_cert) = key_pair("unit CA");
        std::fs::write(dir.path().join("ca.key"), &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca_cert).unwrap();
        let sh = |script: &str| {
            let ok = std::process::Command::new("sh")
                .args(["-c", script])
                .current_dir(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "{script}");
        };
        sh(
            "openssl req -new -newkey rsa:2048 -nodes -subj /CN=leaf/ -keyout leaf.key -out leaf.csr",
        );
        sh(
            "openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -set_serial 7 -days 1 -sha256 -out leaf.crt",
        );
        let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
        let signer = SigningKey::new(&read("leaf.key"), &read("leaf.crt")).unwrap();
        let signed = sign(&uki(), &signer).unwrap();
        let ca = [parse_certificate(&ca_cert).unwrap()];
        assert!(verify(&signed, &ca).unwrap().trusted());
        let leaf = [parse_certificate(&read("leaf.crt")).unwrap()];
        assert!(verify(&signed, &leaf).unwrap().trusted());
        let (_, stranger) = key_pair("unit stranger");
        let stranger = [parse_certificate(&stranger).unwrap()];
        assert!(!verify(&signed, &stranger).unwrap().trusted());
    }

    #[test]
    fn garbage_in_a_pkcs7_entry_is_reported_not_fatal() {
        let (key, cert) = key_pair("unit db");
        let signer = SigningKey::new(&key, &cert).unwrap();
        let mut signed = sign(&uki(), &signer).unwrap();
        let table = uki().len();
        signed[table + 8] = 0x31; // ContentInfo's SEQUENCE tag becomes SET
        let check = verify(&signed, &[parse_certificate(&cert).unwrap()]).unwrap();
        assert!(matches!(
            check.signatures[0].problem,
            Some(SignatureProblem::Malformed(_))
        ));
        assert!(matches!(
            SigningKey::new(b"nonsense", &cert),
            Err(SignError::Key(_))
        ));
        assert!(matches!(parse_certificate(&key), Err(SignError::Cert(_))));
    }
}
