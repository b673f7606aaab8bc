//! Secure Boot keys in an OVMF VARS file: `PK`, `KEK` and `db` as
//! `EFI_SIGNATURE_LIST`s of X.509 certificates, stored as time-based
//! authenticated variables, and the switches that turn enforcement on.
//!
//! What is written matches `virt-fw-vars --set-pk/--add-kek/--add-db
//! --secure-boot` variable for variable (docs/secure-boot.md): attributes
//! NV|BS|RT|TIME_BASED_AUTHENTICATED_WRITE_ACCESS, the certificate's
//! notBefore as the record's timestamp, a placeholder `dbx` (the SHA-256 of
//! nothing) when there is none, `SecureBootEnable` = 1 and `CustomMode` = 0.

use uuid::Uuid;

use crate::store::{OvmfVarsFile, StoreError, VarName, VarStore, Variable, attributes};

/// `EFI_IMAGE_SECURITY_DATABASE_GUID`: the vendor of `db` and `dbx`.
pub const IMAGE_SECURITY_DATABASE: Uuid = Uuid::from_u128(0xd719b2cb_3d3a_4596_a3bc_dad00e67656f);
/// `EFI_CERT_X509_GUID`: a signature list of DER certificates.
pub const CERT_X509: Uuid = Uuid::from_u128(0xa5c059a1_94e4_4aa7_87b5_ab155c2bf072);
/// `EFI_CERT_SHA256_GUID`: a signature list of SHA-256 image hashes.
pub const CERT_SHA256: Uuid = Uuid::from_u128(0xc1c41626_504c_4092_aca9_41f936934328);
/// EDK2's `EFI_SECURE_BOOT_ENABLE_DISABLE` (vendor of `SecureBootEnable`).
pub const SECURE_BOOT_ENABLE_DISABLE: Uuid =
    Uuid::from_u128(0xf0a30bc7_af08_4556_99c4_001009c93a44);
/// EDK2's `EFI_CUSTOM_MODE_ENABLE_GUID` (vendor of `CustomMode`).
pub const CUSTOM_MODE_ENABLE: Uuid = Uuid::from_u128(0xc076ec0c_7028_4399_a072_71ee5c448b9f);
/// OVMF's EnrollDefaultKeys owner GUID, on the placeholder `dbx` entry
/// (as virt-fw-vars writes it).
pub const OVMF_ENROLL_DEFAULT_KEYS: Uuid = Uuid::from_u128(0xa0baa8a3_041d_48a8_bc87_c36d121b5e3d);

/// NV | BS | RT | TIME_BASED_AUTHENTICATED_WRITE_ACCESS: `PK`, `KEK`, `db`, `dbx`.
pub const AUTHENTICATED_VARIABLE: u32 =
    attributes::BOOT_VARIABLE | attributes::TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
/// NV | BS: `SecureBootEnable` and `CustomMode`.
pub const SETUP_SWITCH: u32 = attributes::NON_VOLATILE | attributes::BOOTSERVICE_ACCESS;

/// SHA-256 of the empty string: the placeholder `dbx` entry.
const SHA256_OF_NOTHING: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// `EFI_TIME` (UEFI spec 8.3), UTC: the timestamp of an authenticated variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EfiTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl EfiTime {
    /// 2010-01-01 00:00:00: the timestamp of the placeholder `dbx`.
    pub const INITIAL: EfiTime = EfiTime {
        year: 2010,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
    };

    /// The 16 bytes: Year u16, Month, Day, Hour, Minute, Second, Pad1,
    /// Nanosecond u32, TimeZone i16 (0: UTC), Daylight, Pad2.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&self.year.to_le_bytes());
        b[2] = self.month;
        b[3] = self.day;
        b[4] = self.hour;
        b[5] = self.minute;
        b[6] = self.second;
        b
    }
}

/// One X.509 certificate to enrol, with its signature owner.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The owner GUID stored in front of it (`EFI_SIGNATURE_DATA.SignatureOwner`).
    pub owner: Uuid,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its notBefore: becomes the variable's timestamp, as virt-fw-vars does,
    /// so a later signed update (dated after it) is accepted.
    pub not_before: EfiTime,
}

/// What to enrol: one platform key, KEK and db certificates.
#[derive(Debug, Clone)]
pub struct Keys {
    pub pk: Certificate,
    pub kek: Vec<Certificate>,
    pub db: Vec<Certificate>,
}

/// One `EFI_SIGNATURE_LIST` per certificate: SignatureType
/// `EFI_CERT_X509_GUID`, SignatureListSize, SignatureHeaderSize 0,
/// SignatureSize (16 + DER length), then one `EFI_SIGNATURE_DATA` (owner GUID,
/// DER). Certificates differ in length, so each gets its own list.
pub fn x509_signature_lists(certs: &[Certificate]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in certs {
        signature_list(&mut out, CERT_X509, c.owner, &c.der);
    }
    out
}

fn signature_list(out: &mut Vec<u8>, kind: Uuid, owner: Uuid, data: &[u8]) {
    const LIST_HEADER: usize = 16 + 4 + 4 + 4;
    let signature_size = 16 + data.len();
    out.extend_from_slice(&kind.to_bytes_le());
    out.extend_from_slice(&((LIST_HEADER + signature_size) as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(signature_size as u32).to_le_bytes());
    out.extend_from_slice(&owner.to_bytes_le());
    out.extend_from_slice(data);
}

/// The newest notBefore of `certs` (the timestamp of their variable).
fn newest(certs: &[Certificate]) -> EfiTime {
    certs
        .iter()
        .map(|c| c.not_before)
        .max()
        .unwrap_or(EfiTime::INITIAL)
}

/// Enrols `keys` into `vars` and turns Secure Boot on: `PK`, `KEK`, `db`
/// replaced, a placeholder `dbx` added when there is none,
/// `SecureBootEnable` = 1, `CustomMode` = 0. At the next boot the firmware
/// is in user mode and checks every image against `db`.
pub fn enroll(vars: &mut OvmfVarsFile, keys: &Keys) -> Result<(), StoreError> {
    // A store without timestamps fails at PK, the first write.
    let pk = std::slice::from_ref(&keys.pk);
    let lists: [(VarName, &[Certificate]); 3] = [
        (VarName::global("PK"), pk),
        (VarName::global("KEK"), &keys.kek),
        (VarName::new(IMAGE_SECURITY_DATABASE, "db"), &keys.db),
    ];
    for (name, certs) in lists {
        let value = Variable {
            attributes: AUTHENTICATED_VARIABLE,
            data: x509_signature_lists(certs),
        };
        vars.set_time_based(&name, &value, &newest(certs).to_bytes())?;
    }
    let dbx = VarName::new(IMAGE_SECURITY_DATABASE, "dbx");
    if vars.get(&dbx)?.is_none() {
        let mut data = Vec::new();
        signature_list(
            &mut data,
            CERT_SHA256,
            OVMF_ENROLL_DEFAULT_KEYS,
            &SHA256_OF_NOTHING,
        );
        let value = Variable {
            attributes: AUTHENTICATED_VARIABLE,
            data,
        };
        vars.set_time_based(&dbx, &value, &EfiTime::INITIAL.to_bytes())?;
    }
    for (name, on) in [
        (
            VarName::new(SECURE_BOOT_ENABLE_DISABLE, "SecureBootEnable"),
            1u8,
        ),
        (VarName::new(CUSTOM_MODE_ENABLE, "CustomMode"), 0u8),
    ] {
        vars.set(
            &name,
            &Variable {
                attributes: SETUP_SWITCH,
                data: vec![on],
            },
        )?;
    }
    Ok(())
}

/// Whether `vars` holds a platform key and `SecureBootEnable` = 1: the
/// firmware will enforce Secure Boot on its next boot.
pub fn will_enforce(vars: &OvmfVarsFile) -> Result<bool, StoreError> {
    let pk = vars
        .get(&VarName::global("PK"))?
        .is_some_and(|v| !v.data.is_empty());
    let enabled = vars
        .get(&VarName::new(
            SECURE_BOOT_ENABLE_DISABLE,
            "SecureBootEnable",
        ))?
        .is_some_and(|v| v.data == [1]);
    Ok(pk && enabled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Uuid = Uuid::from_u128(0x11223344_5566_7788_99aa_bbccddeeff00);

    fn cert(der: &[u8], year: u16) -> Certificate {
        Certificate {
            owner: OWNER,
            der: der.to_vec(),
            not_before: EfiTime {
                year,
                month: 11,
                day: 30,
                hour: 10,
                minute: 2,
                second: 3,
            },
        }
    }

    #[test]
    fn a_signature_list_has_the_uefi_layout() {
        let list = x509_signature_lists(&[cert(&[0x30, 0x03, 1, 2, 3], 2026)]);
        assert_eq!(list.len(), 28 + 16 + 5);
        assert_eq!(&list[..16], &CERT_X509.to_bytes_le());
        assert_eq!(u32::from_le_bytes(list[16..20].try_into().unwrap()), 49);
        assert_eq!(u32::from_le_bytes(list[20..24].try_into().unwrap()), 0);
        assert_eq!(u32::from_le_bytes(list[24..28].try_into().unwrap()), 21);
        assert_eq!(&list[28..44], &OWNER.to_bytes_le());
        assert_eq!(&list[44..], &[0x30, 0x03, 1, 2, 3]);
        // Two certificates: two lists, back to back.
        let two = x509_signature_lists(&[cert(&[1], 2026), cert(&[2, 2], 2026)]);
        assert_eq!(two.len(), (28 + 17) + (28 + 18));
    }

    #[test]
    fn efi_time_bytes() {
        let t = cert(&[], 2026).not_before.to_bytes();
        assert_eq!(t, [0xea, 0x07, 11, 30, 10, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
