//! Bundles as an attacker writes them: raw tar headers (no sanitising by the tar crate's path setters), any
//! entries, and a sidecar that matches (whoever can write to a bucket can write both).

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use tar::EntryType;

pub type Builder = tar::Builder<flate2::write::GzEncoder<std::fs::File>>;

/// sha256 of `bytes`, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Appends an entry with `name` and `link` written into the header as they are, and `size` claimed (the data's
/// length unless given).
pub fn raw(
    b: &mut tar::Builder<impl Write>,
    name: &str,
    kind: EntryType,
    link: Option<&str>,
    data: &[u8],
    size: Option<u64>,
) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().expect("a GNU header");
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size.unwrap_or(data.len() as u64));
    h.set_cksum();
    // A claimed size larger than the data leaves the archive truncated there, which is the point.
    let _ = b.append(&h, data);
}

/// Appends a regular file under a name of any length (GNU long-name records).
pub fn long(b: &mut tar::Builder<impl Write>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data).expect("appending a long name");
}

/// Writes `<dir>/<name>.tar.gz`: the `hostile` entries, then `rest` (name, bytes) as regular files; and a
/// sidecar that matches.
pub fn craft(dir: &Path, name: &str, hostile: impl FnOnce(&mut Builder), rest: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(format!("{name}.tar.gz"));
    let f = std::fs::File::create(&path).expect("creating a bundle");
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
    hostile(&mut b);
    for (entry, data) in rest {
        raw(&mut b, entry, EntryType::Regular, None, data, None);
    }
    b.into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|mut f| f.flush())
        .expect("finishing a bundle");
    seal(&path);
    path
}

/// Writes the sidecar (`<bundle>.sha256`, sha256sum format) matching the bundle as it is.
pub fn seal(bundle: &Path) {
    let bytes = std::fs::read(bundle).expect("reading a bundle");
    let name = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(sidecar(bundle), format!("{}  {name}\n", sha256(&bytes))).expect("writing a sidecar");
}

pub fn sidecar(bundle: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", bundle.display()))
}
