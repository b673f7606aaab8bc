//! The abkit EFI loader: one UKI-style stub for both slots.
//!
//! It learns its slot from the slot stamp in its own file's certificate table
//! (`abkit uki stamp`; the firmware does not load that table into memory, so
//! the loader reads it from its file), else from its own file name
//! (`boot-b.efi` → B, anything else → A), takes kernel, initrd and command
//! line from its own PE sections,
//! writes the slot into the command line, records how it booted in EFI
//! variables, measures what it boots into the TPM (PCR 11 and 12, as
//! systemd-stub does) and starts the kernel. The kernel is covered by the
//! loader's own Secure Boot signature: while the firmware loads it from the
//! `.linux` section, a temporary security-policy override accepts exactly
//! that buffer (docs/secure-boot.md). On failure it says what failed and
//! returns an error status, so the firmware moves on to the next boot entry.
#![no_std]
#![no_main]

extern crate alloc;

mod preloader;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use abkit_loader_core::cmdline::{rewrite_slot_placeholder, trim_cmdline, ucs2_units};
use abkit_loader_core::guid::{
    ABKIT_VENDOR_GUID_EFI, LINUX_EFI_INITRD_MEDIA_GUID_EFI, LOADER_INTERFACE_GUID_EFI, format_upper,
};
use abkit_loader_core::measure::{self, Measurement};
use abkit_loader_core::pe::{Layout, PeImage};
use abkit_loader_core::stamp;
use abkit_loader_core::vars::{
    ABKIT_BOOTED_SLOT, LOADER_DEVICE_PART_UUID, LOADER_IMAGE_IDENTIFIER, VOLATILE_BS_RT,
};
use abkit_loader_core::{STUB_MARKER_PREFIX, Slot};
use uefi::boot::{
    self, LoadImageSource, OpenProtocolAttributes, OpenProtocolParams, ScopedProtocol,
};
use uefi::prelude::*;
use uefi::proto::device_path::media::PartitionSignature;
use uefi::proto::device_path::text::{AllowShortcuts, DisplayOnly};
use uefi::proto::device_path::{DevicePath, DevicePathNodeEnum};
use uefi::proto::loaded_image::LoadedImage;
use uefi::proto::media::file::{File, FileAttribute, FileInfo, FileMode, RegularFile};
use uefi::proto::media::fs::SimpleFileSystem;
use uefi::proto::tcg::v2::{HashLogExtendEventFlags, PcrEventInputs, Tcg};
use uefi::proto::tcg::{EventType, PcrIndex};
use uefi::proto::{ProtocolPointer, unsafe_protocol};
use uefi::runtime::{self, VariableAttributes, VariableVendor};
use uefi::{CString16, Guid, println};
use uefi_raw::Boolean;
use uefi_raw::protocol::device_path::DevicePathProtocol;
use uefi_raw::protocol::media::LoadFile2Protocol;

/// `abkit-stub <version>` in the `.abkit` section: `abkit uki build` checks it.
const MARKER_TEXT: &str = concat!("abkit-stub ", env!("CARGO_PKG_VERSION"));
const _: () = assert!(MARKER_TEXT.len() > STUB_MARKER_PREFIX.len());

#[used]
#[unsafe(link_section = ".abkit")]
static STUB_MARKER: [u8; MARKER_TEXT.len()] = marker_bytes();

const fn marker_bytes() -> [u8; MARKER_TEXT.len()] {
    let text = MARKER_TEXT.as_bytes();
    let mut out = [0u8; MARKER_TEXT.len()];
    let mut i = 0;
    while i < text.len() {
        out[i] = text[i];
        i += 1;
    }
    out
}

/// What went wrong, and the status handed back to the firmware.
struct Failure {
    what: &'static str,
    status: Status,
    detail: Option<alloc::string::String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.what, self.status)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

fn fail(what: &'static str, status: Status) -> Failure {
    Failure {
        what,
        status,
        detail: None,
    }
}

trait Context<T> {
    fn context(self, what: &'static str) -> Result<T, Failure>;
}

impl<T, D: fmt::Debug> Context<T> for uefi::Result<T, D> {
    fn context(self, what: &'static str) -> Result<T, Failure> {
        self.map_err(|e| fail(what, e.status()))
    }
}

#[entry]
fn main() -> Status {
    if uefi::helpers::init().is_err() {
        return Status::LOAD_ERROR;
    }
    match boot_own_kernel() {
        Ok(never) => match never {},
        Err(failure) => {
            println!("abkit: error: {failure}");
            failure.status
        }
    }
}

/// Everything the loader learned about itself from its LoadedImage.
struct SelfImage {
    /// The loader's file path as UCS-2 text with NUL (`\EFI\abkit\boot-b.efi`).
    path: CString16,
    /// The path to open on that partition: the device path's file-path
    /// nodes joined (some firmware splits a path into several nodes).
    file_path: Option<CString16>,
    /// The partition it was loaded from.
    device: Option<Handle>,
    /// The loader's image as the firmware mapped it.
    image: &'static [u8],
}

fn boot_own_kernel() -> Result<core::convert::Infallible, Failure> {
    let me = read_self()?;
    // Started under any other name than a slot's loader file: the
    // pre-loader role (returns when there is no state file to follow).
    let slot_loader = Slot::of_slot_loader_ucs2(me.path.to_u16_slice());
    if slot_loader.is_none() {
        preloader::run(me.device);
    }
    let (slot, source) = match read_own_stamp(&me) {
        Ok(Some(slot)) => (slot, "stamp"),
        Ok(None) => (
            Slot::from_loader_path_ucs2(me.path.to_u16_slice()),
            "file name",
        ),
        Err(why) => {
            println!("abkit: warning: cannot read the slot stamp ({why}); using the file name");
            (
                Slot::from_loader_path_ucs2(me.path.to_u16_slice()),
                "file name",
            )
        }
    };
    // The line starts `abkit: booting slot X` whatever the source: serial
    // parsers (tests/vm, abkit-vmtest) match that prefix.
    println!("abkit: booting slot {slot} ({source})");
    if slot_loader == Some(slot) {
        preloader::count_direct_trial(me.device, slot);
    }

    let pe = PeImage::parse(me.image).map_err(|e| Failure {
        what: "cannot read the loader's own PE headers",
        status: Status::LOAD_ERROR,
        detail: Some(alloc::format!("{e}")),
    })?;
    let section = |name: &str| {
        pe.find_section_data(name, Layout::Mapped)
            .map_err(|e| Failure {
                what: "a section of the loader is corrupt",
                status: Status::LOAD_ERROR,
                detail: Some(alloc::format!("{e}")),
            })
    };
    let kernel = section(".linux")?.ok_or(Failure {
        what: "the loader carries no kernel",
        status: Status::NOT_FOUND,
        detail: Some("no .linux section: build a UKI with `abkit uki build`".into()),
    })?;
    let initrd = section(".initrd")?;
    let cmdline = section(".cmdline")?.unwrap_or_default();

    let mut cmdline = trim_cmdline(cmdline).to_vec();
    rewrite_slot_placeholder(&mut cmdline, slot);
    let mut options: Vec<u16> = ucs2_units(&cmdline)
        .map_err(|e| Failure {
            what: "the .cmdline section cannot be passed on",
            status: Status::LOAD_ERROR,
            detail: Some(alloc::format!("{e}")),
        })?
        .collect();
    options.push(0);

    record_boot(&me, slot);
    measure_boot(&pe, &options);

    if let Some(initrd) = initrd {
        offer_initrd(initrd)?;
    }
    start_kernel(kernel, options)
}

fn read_self() -> Result<SelfImage, Failure> {
    let loaded = boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle())
        .context("cannot open the loader's LoadedImage")?;
    let path = match loaded.file_path() {
        Some(path) => path
            .to_string16(DisplayOnly(false), AllowShortcuts(false))
            .map_err(|_| {
                fail(
                    "cannot turn the loader's file path into text",
                    Status::OUT_OF_RESOURCES,
                )
            })?,
        None => CString16::new(),
    };
    let file_path = loaded.file_path().and_then(joined_file_path);
    let (base, size) = loaded.info();
    let size = usize::try_from(size)
        .map_err(|_| fail("the loader's image size is too large", Status::LOAD_ERROR))?;
    // SAFETY: the firmware mapped our whole image (SizeOfImage bytes) at
    // `base`; it stays mapped while we run, and we only read it.
    let image = unsafe { core::slice::from_raw_parts(base.cast::<u8>(), size) };
    Ok(SelfImage {
        path,
        file_path,
        device: loaded.device(),
        image,
    })
}

/// The file-path nodes of `path` joined into one path with single `\`s.
fn joined_file_path(path: &DevicePath) -> Option<CString16> {
    const BACKSLASH: u16 = b'\\' as u16;
    let mut units: Vec<u16> = Vec::new();
    for node in path.node_iter() {
        if let Ok(DevicePathNodeEnum::MediaFilePath(file)) = node.as_enum() {
            let mut name = file.path_name().to_vec();
            while name.last() == Some(&0) {
                name.pop();
            }
            if !units.is_empty()
                && units.last() != Some(&BACKSLASH)
                && name.first() != Some(&BACKSLASH)
            {
                units.push(BACKSLASH);
            }
            units.extend(name);
        }
    }
    if units.is_empty() {
        return None;
    }
    units.push(0);
    CString16::try_from(units).ok()
}

/// How many bytes of its file the loader reads to find the certificate
/// table: the PE headers (`abkit uki build` keeps them in 0x400 bytes).
const HEADER_READ_LEN: usize = 4096;
/// The largest certificate table the loader reads (a signature is a few KiB).
const MAX_CERT_TABLE_LEN: u64 = 256 * 1024;

/// The slot stamped into the loader's own file, `None` if it has none. The
/// certificate table is not part of the mapped image, so this opens the file
/// the loader was started from and reads its headers and the table.
fn read_own_stamp(me: &SelfImage) -> Result<Option<Slot>, alloc::string::String> {
    use alloc::format;
    let device = me.device.ok_or("the loader has no device handle")?;
    let path = me.file_path.as_ref().ok_or("the loader has no file path")?;
    // SAFETY: GetProtocol does not take the file system from its driver (an
    // exclusive open would disconnect it); we use it only within this
    // function, while the device handle exists.
    let mut fs = unsafe { open_shared::<SimpleFileSystem>(device) }
        .map_err(|e| format!("no file system on the loader's device: {:?}", e.status()))?;
    let mut volume = fs
        .open_volume()
        .map_err(|e| format!("cannot open the volume: {:?}", e.status()))?;
    let mut file = volume
        .open(path, FileMode::Read, FileAttribute::empty())
        .map_err(|e| format!("cannot open {path}: {:?}", e.status()))?
        .into_regular_file()
        .ok_or("the loader's path is a directory")?;
    let file_len = file
        .get_boxed_info::<FileInfo>()
        .map_err(|e| format!("cannot read the file size: {:?}", e.status()))?
        .file_size();

    let mut headers = alloc::vec![0u8; HEADER_READ_LEN.min(file_len as usize)];
    read_exact(&mut file, &mut headers)?;
    let pe = PeImage::parse(&headers).map_err(|e| format!("{e}"))?;
    let Some(table) = stamp::table_of(&pe, file_len).map_err(|e| format!("{e}"))? else {
        return Ok(None);
    };
    let table_len = table.end - table.start;
    if table_len > MAX_CERT_TABLE_LEN {
        return Err(format!("the certificate table is {table_len} bytes"));
    }
    let mut bytes = alloc::vec![0u8; table_len as usize];
    file.set_position(table.start)
        .map_err(|e| format!("cannot seek: {:?}", e.status()))?;
    read_exact(&mut file, &mut bytes)?;
    stamp::find_stamp(&bytes).map_err(|e| format!("{e}"))
}

/// Fills `buf` from `file`, failing on a short read.
fn read_exact(file: &mut RegularFile, buf: &mut [u8]) -> Result<(), alloc::string::String> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => return Err("the file ended early".into()),
            Ok(n) => done += n,
            Err(e) => return Err(alloc::format!("cannot read: {:?}", e.status())),
        }
    }
    Ok(())
}

/// Sets the Boot Loader Interface variables and abkit's booted-slot variable.
/// A failure here is reported but does not stop the boot.
fn record_boot(me: &SelfImage, slot: Slot) {
    let loader_vendor = VariableVendor(Guid::from_bytes(LOADER_INTERFACE_GUID_EFI));
    let abkit_vendor = VariableVendor(Guid::from_bytes(ABKIT_VENDOR_GUID_EFI));
    match esp_partition_guid(me.device) {
        Some(guid) => {
            let text = format_upper(guid);
            let value: Vec<u16> = text.iter().map(|&b| u16::from(b)).chain([0]).collect();
            set_text_variable(LOADER_DEVICE_PART_UUID, &loader_vendor, &value);
        }
        None => println!(
            "abkit: warning: the loader's partition has no GPT GUID; {LOADER_DEVICE_PART_UUID} not set"
        ),
    }
    set_text_variable(
        LOADER_IMAGE_IDENTIFIER,
        &loader_vendor,
        me.path.to_u16_slice_with_nul(),
    );
    let slot_text = [u16::from(slot.letter_byte()), 0];
    set_text_variable(ABKIT_BOOTED_SLOT, &abkit_vendor, &slot_text);
}

fn set_text_variable(name: &str, vendor: &VariableVendor, value: &[u16]) {
    let Ok(name16) = CString16::try_from(name) else {
        return;
    };
    let bytes: Vec<u8> = value.iter().flat_map(|u| u.to_le_bytes()).collect();
    let attributes = VariableAttributes::from_bits_truncate(VOLATILE_BS_RT);
    if let Err(e) = runtime::set_variable(&name16, vendor, attributes, &bytes) {
        println!("abkit: warning: cannot set {name}: {:?}", e.status());
    }
}

/// Opens protocol `P` on `handle` for reading without taking it from the
/// driver that installed it (GET_PROTOCOL): an exclusive open would
/// disconnect the FAT, partition or security drivers the firmware still needs.
///
/// # Safety
/// The caller must stop using the protocol before the handle or the
/// protocol goes away (for the loader: before it exits or starts a kernel).
unsafe fn open_shared<P: ProtocolPointer + ?Sized>(
    handle: Handle,
) -> uefi::Result<ScopedProtocol<P>> {
    // SAFETY: passed on to the caller (see above).
    unsafe {
        boot::open_protocol::<P>(
            OpenProtocolParams {
                handle,
                agent: boot::image_handle(),
                controller: None,
            },
            OpenProtocolAttributes::GetProtocol,
        )
    }
}

/// The GPT partition GUID (EFI byte order) from the HD() node of the device
/// the loader was loaded from.
fn esp_partition_guid(device: Option<Handle>) -> Option<[u8; 16]> {
    let device = device?;
    // SAFETY: GetProtocol does not take the protocol from its drivers (an
    // exclusive open would disconnect the FAT and partition drivers); we only
    // read the path while the handle exists, which it does until we exit.
    let path = unsafe { open_shared::<DevicePath>(device) }.ok()?;
    path.node_iter().find_map(|node| match node.as_enum() {
        Ok(DevicePathNodeEnum::MediaHardDrive(hd)) => match hd.partition_signature() {
            PartitionSignature::Guid(guid) => Some(guid.to_bytes()),
            _ => None,
        },
        _ => None,
    })
}

/// `EFI_LOAD_FILE2_PROTOCOL` serving the initrd, with the data it serves.
/// The protocol must be the first field: the firmware hands its address back.
#[repr(C)]
struct InitrdLoadFile {
    protocol: LoadFile2Protocol,
    data: &'static [u8],
}

/// Device path of one vendor media node with `LINUX_EFI_INITRD_MEDIA_GUID`
/// and an end node: where Linux's EFI stub looks for its initrd.
#[repr(C, packed)]
struct InitrdDevicePath {
    node_type: u8,
    node_subtype: u8,
    node_length: [u8; 2],
    vendor_guid: [u8; 16],
    end: [u8; 4],
}

static INITRD_DEVICE_PATH: InitrdDevicePath = InitrdDevicePath {
    node_type: 4,    // media device path
    node_subtype: 3, // vendor
    node_length: 20u16.to_le_bytes(),
    vendor_guid: LINUX_EFI_INITRD_MEDIA_GUID_EFI,
    end: [0x7f, 0xff, 4, 0], // end of entire device path
};

/// `LoadFile2.LoadFile` for the initrd: report the size when the buffer is
/// missing or short, else copy the initrd into it.
///
/// # Safety
/// Called by the firmware/kernel with `this` pointing at our `InitrdLoadFile`
/// and `buffer_size` (and `buffer`, when not null) valid for writes.
unsafe extern "efiapi" fn load_initrd(
    this: *mut LoadFile2Protocol,
    _file_path: *const DevicePathProtocol,
    boot_policy: Boolean,
    buffer_size: *mut usize,
    buffer: *mut c_void,
) -> Status {
    if this.is_null() || buffer_size.is_null() {
        return Status::INVALID_PARAMETER;
    }
    if boot_policy != Boolean::FALSE {
        // LoadFile2 never serves boot selections.
        return Status::UNSUPPORTED;
    }
    // SAFETY: `this` is the first field of a leaked InitrdLoadFile (repr(C)).
    let data = unsafe { (*this.cast::<InitrdLoadFile>()).data };
    // SAFETY: checked non-null above; the caller owns it.
    let available = unsafe { *buffer_size };
    if buffer.is_null() || available < data.len() {
        // SAFETY: as above.
        unsafe { *buffer_size = data.len() };
        return Status::BUFFER_TOO_SMALL;
    }
    // SAFETY: the caller gave a buffer of `available >= data.len()` bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(data.as_ptr(), buffer.cast::<u8>(), data.len());
        *buffer_size = data.len();
    }
    Status::SUCCESS
}

/// Installs the initrd device path and LoadFile2 on a new handle, as UKI stubs
/// do; the kernel's EFI stub asks for it and loads the initrd from us.
fn offer_initrd(initrd: &'static [u8]) -> Result<(), Failure> {
    let loader: &'static InitrdLoadFile = Box::leak(Box::new(InitrdLoadFile {
        protocol: LoadFile2Protocol {
            load_file: load_initrd,
        },
        data: initrd,
    }));
    // SAFETY: both interfaces are 'static (a static and a leaked box) and
    // match their GUIDs: a device path, and a LoadFile2 protocol struct.
    unsafe {
        let handle = boot::install_protocol_interface(
            None,
            &DevicePathProtocol::GUID,
            (&raw const INITRD_DEVICE_PATH).cast::<c_void>(),
        )
        .context("cannot install the initrd device path")?;
        boot::install_protocol_interface(
            Some(handle),
            &LoadFile2Protocol::GUID,
            core::ptr::from_ref(loader).cast::<c_void>(),
        )
        .context("cannot install the initrd LoadFile2 protocol")?;
    }
    Ok(())
}

/// Measures the UKI's sections into PCR 11 and the command line as passed
/// (UTF-16 with NUL) into PCR 12, each with an `EV_IPL` event-log entry, as
/// systemd-stub does. Without a TPM it does nothing; a failed measurement is
/// reported and the boot goes on (the PCRs then simply do not match).
fn measure_boot(pe: &PeImage<'_>, options: &[u16]) {
    let Ok(handle) = boot::get_handle_for_protocol::<Tcg>() else {
        return;
    };
    let Ok(mut tcg) = boot::open_protocol_exclusive::<Tcg>(handle) else {
        println!("abkit: warning: cannot open the TPM protocol; nothing measured");
        return;
    };
    let mut count = 0;
    let mut extend = |m: Measurement<'_>, event_data: &[u8]| {
        let event = match PcrEventInputs::new_in_box(PcrIndex(m.pcr), EventType::IPL, event_data) {
            Ok(event) => event,
            Err(e) => return Err(e.status()),
        };
        tcg.hash_log_extend_event(HashLogExtendEventFlags::empty(), m.data, &event)
            .map_err(|e| e.status())?;
        count += 1;
        Ok(())
    };
    let mut failed = None;
    let sections = measure::pcr11_measurements(pe, Layout::Mapped, |m| {
        if failed.is_none() {
            let mut description = [0u8; 32];
            let n = measure::event_description(m.description, &mut description);
            failed = extend(m, &description[..n]).err();
        }
    });
    // The options as the bytes the kernel receives.
    let bytes: Vec<u8> = options.iter().flat_map(|u| u.to_le_bytes()).collect();
    if failed.is_none() && sections.is_ok() {
        let m = Measurement {
            pcr: measure::PCR_KERNEL_PARAMETERS,
            data: &bytes,
            description: "",
        };
        failed = extend(m, &bytes).err();
    }
    match (sections, failed) {
        (Ok(()), None) => println!(
            "abkit: measured {} events into PCR {} and {}",
            count,
            measure::PCR_KERNEL_IMAGE,
            measure::PCR_KERNEL_PARAMETERS
        ),
        (Err(e), _) => println!("abkit: warning: cannot measure the sections: {e}"),
        (_, Some(status)) => {
            println!("abkit: warning: TPM measurement failed after {count} events: {status:?}")
        }
    }
}

/// `EFI_SECURITY2_ARCH_PROTOCOL` (PI spec, vol. 2): the firmware's hook
/// that LoadImage calls to check (and measure) every image. Under Secure
/// Boot it refuses the kernel in `.linux`: the kernel is not signed by a
/// key in db, only the loader around it is.
#[repr(C)]
#[unsafe_protocol("94ab2f58-1438-4ef1-9152-18941a3a0e68")]
struct Security2Arch {
    file_authentication: FileAuthentication,
}

type FileAuthentication = unsafe extern "efiapi" fn(
    this: *const Security2Arch,
    file: *const DevicePathProtocol,
    file_buffer: *const c_void,
    file_size: usize,
    boot_policy: Boolean,
) -> Status;

/// The firmware's own FileAuthentication while ours is installed.
static ORIGINAL_AUTHENTICATION: AtomicUsize = AtomicUsize::new(0);
/// The one buffer ours accepts: the `.linux` section (address, length).
static OWN_KERNEL: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));

/// Accepts exactly the loader's own `.linux` section (same address and
/// length: it lies inside the image the firmware just verified) and hands
/// everything else to the firmware's check.
///
/// # Safety
/// Called by the firmware as its FileAuthentication, with its arguments.
unsafe extern "efiapi" fn accept_own_kernel(
    this: *const Security2Arch,
    file: *const DevicePathProtocol,
    file_buffer: *const c_void,
    file_size: usize,
    boot_policy: Boolean,
) -> Status {
    if !file_buffer.is_null()
        && file_buffer as usize == OWN_KERNEL.0.load(Ordering::SeqCst)
        && file_size == OWN_KERNEL.1.load(Ordering::SeqCst)
    {
        return Status::SUCCESS;
    }
    let original = ORIGINAL_AUTHENTICATION.load(Ordering::SeqCst);
    if original == 0 {
        return Status::SECURITY_VIOLATION;
    }
    // SAFETY: set from the protocol's own function pointer before ours was
    // installed, and valid while the firmware runs.
    let original: FileAuthentication = unsafe { core::mem::transmute(original) };
    // SAFETY: the firmware's function with the firmware's arguments.
    unsafe { original(this, file, file_buffer, file_size, boot_policy) }
}

/// Loads `kernel` (a slice of our own mapped image) with the security
/// override in place, and restores the firmware's check right after, as
/// systemd-stub does (`security_override`). Without the protocol (no
/// Secure Boot machinery) it loads as is.
fn load_own_kernel(kernel: &[u8]) -> uefi::Result<Handle> {
    let load = || {
        boot::load_image(
            boot::image_handle(),
            LoadImageSource::FromBuffer {
                buffer: kernel,
                file_path: None,
            },
        )
    };
    let Ok(handle) = boot::get_handle_for_protocol::<Security2Arch>() else {
        return load();
    };
    // SAFETY: GetProtocol does not disconnect the firmware's own driver; the
    // interface lives as long as the firmware's boot services.
    let Ok(mut security) = (unsafe { open_shared::<Security2Arch>(handle) }) else {
        return load();
    };
    OWN_KERNEL
        .0
        .store(kernel.as_ptr() as usize, Ordering::SeqCst);
    OWN_KERNEL.1.store(kernel.len(), Ordering::SeqCst);
    let original = security.file_authentication;
    ORIGINAL_AUTHENTICATION.store(original as usize, Ordering::SeqCst);
    security.file_authentication = accept_own_kernel;
    let result = load();
    security.file_authentication = original;
    ORIGINAL_AUTHENTICATION.store(0, Ordering::SeqCst);
    OWN_KERNEL.1.store(0, Ordering::SeqCst);
    result
}

/// Loads the kernel from memory, gives it the command line and starts it.
/// Returns only if the kernel could not be started or came back.
fn start_kernel(kernel: &[u8], options: Vec<u16>) -> Result<core::convert::Infallible, Failure> {
    let child = load_own_kernel(kernel).context("the firmware refused to load the kernel")?;
    // The kernel reads its options after StartImage: they must outlive it.
    let options: &'static [u16] = options.leak();
    let size = u32::try_from(core::mem::size_of_val(options))
        .map_err(|_| fail("the command line is too long", Status::INVALID_PARAMETER))?;
    {
        let mut loaded = boot::open_protocol_exclusive::<LoadedImage>(child)
            .context("cannot open the kernel's LoadedImage")?;
        // SAFETY: `options` is leaked, so valid for the kernel's lifetime.
        unsafe { loaded.set_load_options(options.as_ptr().cast::<u8>(), size) };
    }
    let status = match boot::start_image(child) {
        Ok(()) => Status::LOAD_ERROR,
        Err(e) => e.status(),
    };
    Err(fail("the kernel returned to the loader", status))
}
