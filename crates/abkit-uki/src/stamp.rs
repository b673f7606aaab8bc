//! Writing the slot stamp into a loader file, and the Authenticode digest
//! that proves the stamp leaves the signed bytes alone.
//!
//! The stamp's byte layout and the certificate-table rules belong to
//! [`abkit_loader_core::stamp`] (the loader reads them at boot); this module
//! rewrites the table on the host: it keeps every foreign entry (an sbsign or
//! pesign signature) byte for byte, puts the stamp where an old one was or
//! after the last entry ("stamp after sign"), updates the directory entry
//! and recomputes the PE checksum.

use abkit_loader_core::Slot;
use abkit_loader_core::pe::{PeError, PeImage};
use abkit_loader_core::stamp::{self, StampError, layout::CERT_ALIGN};
use sha2::{Digest, Sha256};

use crate::pe_checksum;

/// `pe` with its slot stamp set to `slot`: an old stamp is replaced in place,
/// otherwise the stamp is appended to the certificate table (which is
/// created, 8-aligned at the end of the file, if there is none). The
/// Authenticode digest, and so any signature, stays valid.
pub fn stamp(pe: &[u8], slot: Slot) -> Result<Vec<u8>, StampError> {
    rewrite_table(pe, Some(slot))
}

/// `pe` without a slot stamp; other certificate-table entries are kept. A
/// table left empty is removed (directory entry zeroed, file cut where the
/// table began).
pub fn remove_stamp(pe: &[u8]) -> Result<Vec<u8>, StampError> {
    rewrite_table(pe, None)
}

/// The slot stamped into `pe`, `None` if it has no stamp.
pub fn read_stamp(pe: &[u8]) -> Result<Option<Slot>, StampError> {
    stamp::stamp_of_file(pe)
}

fn rewrite_table(pe: &[u8], slot: Option<Slot>) -> Result<Vec<u8>, StampError> {
    let image = PeImage::parse(pe)?;
    let dir_at = image
        .security_directory_offset()
        .ok_or(StampError::NoSecurityDirectory)?;
    let located = stamp::table_of(&image, pe.len() as u64)?;
    let (body_end, old_table) = match &located {
        // In range: table_of checked that the table ends the file.
        Some(range) => (range.start as usize, &pe[range.start as usize..]),
        None => (pe.len(), &pe[pe.len()..]),
    };
    if located.is_none() {
        // A new table goes at the end: no section may reach past it.
        for s in image.sections() {
            let end = u64::from(s.pointer_to_raw_data) + u64::from(s.size_of_raw_data);
            if end > pe.len() as u64 {
                return Err(PeError::SectionOutOfRange {
                    name: s.name,
                    start: s.pointer_to_raw_data,
                    size: s.size_of_raw_data,
                    len: pe.len(),
                }
                .into());
            }
        }
    }

    let new_stamp = slot.map(stamp::encode_stamp);
    let mut table = Vec::with_capacity(old_table.len() + 32);
    let mut placed = false;
    for entry in stamp::entries(old_table) {
        let entry = entry?;
        if entry.is_stamp() {
            if !placed {
                table.extend(new_stamp.iter().flatten());
                placed = true;
            }
        } else {
            table.extend_from_slice(entry.padded);
        }
    }
    if !placed {
        table.extend(new_stamp.iter().flatten());
    }

    let mut out = pe[..body_end].to_vec();
    let (address, size) = if table.is_empty() {
        (0, 0)
    } else {
        // The table starts 8-aligned (PE/COFF 4.7); an unsigned file that
        // does not end aligned gets zero padding, as signing tools add it.
        out.resize(out.len().next_multiple_of(CERT_ALIGN), 0);
        let address = u32::try_from(out.len()).map_err(|_| StampError::TooLarge)?;
        let size = u32::try_from(table.len()).map_err(|_| StampError::TooLarge)?;
        address.checked_add(size).ok_or(StampError::TooLarge)?;
        out.extend_from_slice(&table);
        (address, size)
    };
    out[dir_at..dir_at + 4].copy_from_slice(&address.to_le_bytes());
    out[dir_at + 4..dir_at + 8].copy_from_slice(&size.to_le_bytes());
    let checksum_at = image.checksum_offset();
    let checksum = pe_checksum(&out, checksum_at);
    out[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_le_bytes());
    Ok(out)
}

/// The Authenticode SHA-256 digest of a PE file, as signing tools (sbsign,
/// pesign, osslsigncode) sign it and as firmware measures it into PCR 4
/// (EDK2's HashPeImage): the headers up to `SizeOfHeaders` without the
/// checksum field and the certificate-table directory entry, then each
/// section's raw data in file order, then any bytes after the sections up
/// to the certificate table. The table itself is not hashed.
pub fn authenticode_sha256(pe: &[u8]) -> Result<[u8; 32], StampError> {
    let image = PeImage::parse(pe)?;
    let len = pe.len();
    let checksum_at = image.checksum_offset();
    let headers_end = image.optional.size_of_headers as usize;
    let too_short = StampError::Pe(PeError::OptionalHeaderTooShort {
        size: image.size_of_optional_header,
    });
    // The header minus the checksum field and the directory entry (which
    // comes after the checksum), in order.
    let dir = image
        .security_directory_offset()
        .map_or(checksum_at + 4..checksum_at + 4, |d| d..d + 8);
    if headers_end > len || dir.end > headers_end {
        return Err(too_short);
    }
    let mut hash = Sha256::new();
    hash.update(&pe[..checksum_at]);
    hash.update(&pe[checksum_at + 4..dir.start]);
    let from = dir.end;
    hash.update(&pe[from..headers_end]);

    let mut sections: Vec<_> = image
        .sections()
        .filter(|s| s.size_of_raw_data != 0)
        .collect();
    sections.sort_by_key(|s| s.pointer_to_raw_data);
    let mut hashed = headers_end;
    for s in &sections {
        let start = s.pointer_to_raw_data as usize;
        let data = start
            .checked_add(s.size_of_raw_data as usize)
            .and_then(|end| pe.get(start..end))
            .ok_or(PeError::SectionOutOfRange {
                name: s.name,
                start: s.pointer_to_raw_data,
                size: s.size_of_raw_data,
                len,
            })?;
        hash.update(data);
        hashed += data.len();
    }

    let table_len =
        stamp::table_of(&image, len as u64)?.map_or(0, |range| (range.end - range.start) as usize);
    let trailer_end = len - table_len;
    if trailer_end > hashed {
        hash.update(&pe[hashed..trailer_end]);
    }
    Ok(hash.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{OPTIONAL_HEADER_SIZE, PE_OFFSET, minimal_stub};
    use crate::{UkiParts, build, inspect};
    use abkit_loader_core::stamp::layout::{WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA};

    /// Offset of the certificate-table directory entry in the fixture.
    const DIR: usize = PE_OFFSET + 24 + 112 + 4 * 8;

    fn uki() -> Vec<u8> {
        let kernel = vec![0x4b; 3000];
        build(
            &minimal_stub(),
            &UkiParts {
                linux: &kernel,
                initrd: Some(b"initrd"),
                cmdline: Some(b"root=PARTLABEL=ABKIT-SYSTEM-X"),
                osrel: None,
            },
        )
        .unwrap()
    }

    fn dir(pe: &[u8]) -> (u32, u32) {
        let at = |i: usize| u32::from_le_bytes(pe[i..i + 4].try_into().unwrap());
        (at(DIR), at(DIR + 4))
    }

    /// `pe` with a PKCS#7-typed entry of `body_len` bytes (an odd length, so
    /// it is padded) as its certificate table, as sbsign would leave it.
    fn fake_signed(pe: &[u8], body_len: usize) -> Vec<u8> {
        let mut out = pe.to_vec();
        let start = out.len() as u32;
        out.extend_from_slice(&(8 + body_len as u32).to_le_bytes());
        out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
        out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
        out.extend((0..body_len).map(|i| (i * 7) as u8));
        out.resize(out.len().next_multiple_of(8), 0);
        let size = out.len() as u32 - start;
        out[DIR..DIR + 4].copy_from_slice(&start.to_le_bytes());
        out[DIR + 4..DIR + 8].copy_from_slice(&size.to_le_bytes());
        let checksum_at = PE_OFFSET + 24 + 64;
        let checksum = pe_checksum(&out, checksum_at);
        out[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_le_bytes());
        out
    }

    #[test]
    fn directory_offset_matches_the_fixture() {
        let pe = uki();
        let image = PeImage::parse(&pe).unwrap();
        assert_eq!(image.security_directory_offset(), Some(DIR));
        assert_eq!(OPTIONAL_HEADER_SIZE, 240);
    }

    #[test]
    fn stamp_round_trip_replace_and_remove() {
        let plain = uki();
        assert_eq!(read_stamp(&plain), Ok(None));

        let a = stamp(&plain, Slot::A).unwrap();
        assert_eq!(read_stamp(&a), Ok(Some(Slot::A)));
        assert_eq!(a.len(), plain.len() + 32);
        assert_eq!(&a[plain.len()..], &stamp::encode_stamp(Slot::A));
        assert_eq!(dir(&a), (plain.len() as u32, 32));
        let info = inspect(&a).unwrap();
        assert_eq!(info.checksum_stored, info.checksum_computed);
        assert_eq!(info.slot_stamp.as_deref(), Some("A"));
        assert_eq!(info.certificates, 1);

        // Stamping again replaces, never duplicates.
        let b = stamp(&a, Slot::B).unwrap();
        assert_eq!(read_stamp(&b), Ok(Some(Slot::B)));
        assert_eq!(b.len(), a.len());
        let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        let checksum_at = PE_OFFSET + 24 + 64;
        assert!(
            differing
                .iter()
                .all(|&i| (checksum_at..checksum_at + 4).contains(&i) || i == plain.len() + 29),
            "{differing:?}"
        );
        assert_eq!(stamp(&b, Slot::B).unwrap(), b);

        // Removing the stamp gives back the unstamped file, byte for byte.
        assert_eq!(remove_stamp(&b).unwrap(), plain);
        assert_eq!(remove_stamp(&plain).unwrap(), plain);
    }

    #[test]
    fn stamped_and_unstamped_copies_share_the_authenticode_digest() {
        let plain = uki();
        let digest = authenticode_sha256(&plain).unwrap();
        let a = stamp(&plain, Slot::A).unwrap();
        let b = stamp(&plain, Slot::B).unwrap();
        assert_eq!(authenticode_sha256(&a).unwrap(), digest);
        assert_eq!(authenticode_sha256(&b).unwrap(), digest);
        assert_eq!(
            authenticode_sha256(&fake_signed(&plain, 1001)).unwrap(),
            digest
        );
        assert_ne!(a, b);

        // A hashed byte changes it: a section byte, a header byte.
        let mut changed = b.clone();
        *changed.last_mut().unwrap() ^= 1; // in the table: not hashed
        assert_eq!(authenticode_sha256(&changed).unwrap(), digest);
        let mut changed = b.clone();
        changed[0x400] ^= 1; // .text
        assert_ne!(authenticode_sha256(&changed).unwrap(), digest);
        let mut changed = b.clone();
        changed[PE_OFFSET + 24 + 56] ^= 1; // SizeOfImage
        assert_ne!(authenticode_sha256(&changed).unwrap(), digest);
    }

    #[test]
    fn the_signature_entry_is_kept_byte_for_byte() {
        let plain = uki();
        let signed = fake_signed(&plain, 1001);
        let table = signed[plain.len()..].to_vec();
        assert_eq!(table.len(), 1016);

        // Stamp after sign: the signature first, then the stamp.
        let b = stamp(&signed, Slot::B).unwrap();
        let checksum_at = PE_OFFSET + 24 + 64;
        assert_eq!(&b[..checksum_at], &signed[..checksum_at]);
        assert_eq!(&b[checksum_at + 4..DIR], &signed[checksum_at + 4..DIR]);
        assert_eq!(&b[plain.len()..plain.len() + table.len()], &table[..]);
        assert_eq!(dir(&b), (plain.len() as u32, table.len() as u32 + 32));
        assert_eq!(read_stamp(&b), Ok(Some(Slot::B)));
        assert_eq!(inspect(&b).unwrap().certificates, 2);
        let a = stamp(&b, Slot::A).unwrap();
        assert_eq!(&a[plain.len()..plain.len() + table.len()], &table[..]);
        assert_eq!(remove_stamp(&a).unwrap(), signed);

        // Stamp before sign (the signer appends): restamping keeps the order.
        let mut before = stamp(&plain, Slot::A).unwrap();
        before.extend_from_slice(&table);
        let size = 32 + table.len() as u32;
        before[DIR + 4..DIR + 8].copy_from_slice(&size.to_le_bytes());
        let restamped = stamp(&before, Slot::B).unwrap();
        assert_eq!(restamped.len(), before.len());
        assert_eq!(&restamped[plain.len() + 32..], &table[..]);
        assert_eq!(read_stamp(&restamped), Ok(Some(Slot::B)));
    }

    #[test]
    fn an_unaligned_file_gets_padding_before_its_table() {
        let mut odd = uki();
        odd.extend_from_slice(b"xyz");
        let b = stamp(&odd, Slot::B).unwrap();
        let start = odd.len().next_multiple_of(8);
        assert_eq!(dir(&b), (start as u32, 32));
        assert_eq!(&b[odd.len()..start], &[0; 5]);
        assert_eq!(read_stamp(&b), Ok(Some(Slot::B)));
        // Signers pad the same way: the digest is that of the padded file.
        let mut padded = odd.clone();
        padded.resize(start, 0);
        assert_eq!(
            authenticode_sha256(&b).unwrap(),
            authenticode_sha256(&padded).unwrap()
        );
    }

    #[test]
    fn refusals_are_typed() {
        let plain = uki();
        assert!(matches!(
            stamp(b"not a PE", Slot::A),
            Err(StampError::Pe(_))
        ));
        assert!(matches!(read_stamp(b"MZ"), Err(StampError::Pe(_))));

        // A table that is not at the end of the file.
        let mut trailing = stamp(&plain, Slot::A).unwrap();
        trailing.extend_from_slice(&[0; 8]);
        let err = stamp(&trailing, Slot::B).unwrap_err();
        assert_eq!(
            err,
            StampError::TableNotAtEnd {
                offset: plain.len() as u32,
                size: 32,
                len: plain.len() as u64 + 40
            }
        );
        assert_eq!(read_stamp(&trailing), Err(err.clone()));
        assert_eq!(authenticode_sha256(&trailing), Err(err));

        // A table inside the last section's data.
        let mut inside = stamp(&plain, Slot::A).unwrap();
        let start = (plain.len() - 0x200) as u32;
        let size = (inside.len() as u32) - start;
        inside[DIR..DIR + 4].copy_from_slice(&start.to_le_bytes());
        inside[DIR + 4..DIR + 8].copy_from_slice(&size.to_le_bytes());
        assert!(matches!(
            stamp(&inside, Slot::B),
            Err(StampError::TableOverlapsSections { .. })
        ));

        // Too few data directories for a certificate table.
        let mut few = plain.clone();
        let count_at = PE_OFFSET + 24 + 108;
        few[count_at..count_at + 4].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(stamp(&few, Slot::A), Err(StampError::NoSecurityDirectory));
        assert_eq!(read_stamp(&few), Ok(None));

        // A broken table entry.
        let mut broken = fake_signed(&plain, 100);
        broken[plain.len()] = 0xff;
        assert!(matches!(
            stamp(&broken, Slot::A),
            Err(StampError::BadEntry { at: 0, .. })
        ));

        // A truncated file without a table.
        assert!(matches!(
            stamp(&plain[..plain.len() - 1], Slot::A),
            Err(StampError::Pe(PeError::SectionOutOfRange { .. }))
        ));
    }
}
