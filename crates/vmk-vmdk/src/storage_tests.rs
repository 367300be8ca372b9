//! Disks on a [`Storage`] other than the host's file system: an in-memory one that locks
//! like a datastore (one writer, shared readers), for every writable subformat.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::storage::{Storage, StorageFile};
use crate::{CreateOptions, OpenMode, Subformat, Vmdk, VmdkError};

#[derive(Default)]
struct Node {
    data: Vec<u8>,
    /// -1: open for writing; n > 0: n readers.
    opens: i32,
}

#[derive(Debug, Default)]
struct Mem {
    files: Mutex<BTreeMap<PathBuf, Arc<Mutex<Node>>>>,
    /// size hints of created files (to see flat extents asked for their full size).
    hints: Mutex<Vec<(PathBuf, u64)>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({} bytes)", self.data.len())
    }
}

#[derive(Debug)]
struct MemFile {
    node: Arc<Mutex<Node>>,
    writable: bool,
}

impl Drop for MemFile {
    fn drop(&mut self) {
        let mut n = self.node.lock().unwrap();
        n.opens = if self.writable { 0 } else { n.opens - 1 };
    }
}

impl StorageFile for MemFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let n = self.node.lock().unwrap();
        let off = off as usize;
        if off >= n.data.len() {
            return Ok(0);
        }
        let k = buf.len().min(n.data.len() - off);
        buf[..k].copy_from_slice(&n.data[off..off + k]);
        Ok(k)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        assert!(self.writable, "write through a read-only open");
        let mut n = self.node.lock().unwrap();
        let end = off as usize + buf.len();
        if n.data.len() < end {
            n.data.resize(end, 0);
        }
        n.data[off as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.node.lock().unwrap().data.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.node.lock().unwrap().data.resize(len as usize, 0);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn allocated(&self) -> u64 {
        self.node.lock().unwrap().data.len() as u64
    }
}

impl Storage for Mem {
    fn open(&self, path: &Path, writable: bool) -> io::Result<Box<dyn StorageFile>> {
        let node = self
            .files
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        {
            let mut n = node.lock().unwrap();
            if n.opens < 0 || (writable && n.opens > 0) {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{}: locked by host 7 since noon", path.display()),
                ));
            }
            n.opens = if writable { -1 } else { n.opens + 1 };
        }
        Ok(Box::new(MemFile { node, writable }))
    }
    fn create(&self, path: &Path, size_hint: u64) -> io::Result<Box<dyn StorageFile>> {
        let mut files = self.files.lock().unwrap();
        if files.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let node = Arc::new(Mutex::new(Node {
            data: Vec::new(),
            opens: -1,
        }));
        files.insert(path.to_path_buf(), node.clone());
        self.hints
            .lock()
            .unwrap()
            .push((path.to_path_buf(), size_hint));
        Ok(Box::new(MemFile {
            node,
            writable: true,
        }))
    }
    fn exists(&self, path: &Path) -> bool {
        self.files.lock().unwrap().contains_key(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.files.lock().unwrap().remove(path);
        Ok(())
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn every_writable_subformat_round_trips_on_a_storage_and_locks() {
    for sub in [
        Subformat::MonolithicSparse,
        Subformat::MonolithicFlat,
        Subformat::TwoGbMaxExtentSparse,
        Subformat::TwoGbMaxExtentFlat,
        Subformat::Vmfs,
    ] {
        let mem = Arc::new(Mem::default());
        let st: Arc<dyn Storage> = mem.clone();
        let path = Path::new("[ds1] vm1/disk.vmdk");
        let mut opts = CreateOptions::new(8 << 20, sub);
        opts.split_size = 3 << 20; // several extent files
        let mut d = Vmdk::create_on(st.clone(), path, &opts).expect("create");
        let data = pattern(sub as u8, 3 << 20);
        // Across extent boundaries of the split subformats, unaligned.
        d.write_at(1 << 20 | 512, &data).expect("write");
        d.flush().expect("flush");
        // One writer: a second read-write (or read-only) open is refused, naming the holder.
        let e = Vmdk::open_on(st.clone(), path, OpenMode::ReadOnly).unwrap_err();
        assert!(
            matches!(&e, VmdkError::InUse { why, .. } if why.contains("locked by host 7")),
            "{sub}: {e}"
        );
        d.close().expect("close");
        // No file is left open (so locked) after close.
        for (p, n) in mem.files.lock().unwrap().iter() {
            assert_eq!(
                n.lock().unwrap().opens,
                0,
                "{sub}: {} still open",
                p.display()
            );
        }
        // Files next to the descriptor, in its directory.
        let names: Vec<String> = mem
            .files
            .lock()
            .unwrap()
            .keys()
            .map(|p| p.display().to_string())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("[ds1] vm1/disk")),
            "{sub}: {names:?}"
        );
        if !sub.is_sparse() {
            // Flat extents are created with their size as a hint (eager allocation).
            let hints = mem.hints.lock().unwrap();
            assert!(
                hints.iter().any(|(p, h)| *h > 0 && p != path),
                "{sub}: {hints:?}"
            );
        }
        // Readers share; what they read is what was written.
        let mut r1 = Vmdk::open_on(st.clone(), path, OpenMode::ReadOnly).expect("reader 1");
        let mut r2 = Vmdk::open_on(st.clone(), path, OpenMode::ReadOnly).expect("reader 2");
        let mut back = vec![0u8; data.len()];
        r1.read_at(1 << 20 | 512, &mut back).expect("read");
        assert!(back == data, "{sub}: data differs");
        let mut head = vec![1u8; 4096];
        r2.read_at(0, &mut head).expect("read");
        assert!(
            head.iter().all(|&b| b == 0),
            "{sub}: unwritten space not zero"
        );
        assert!(Vmdk::open_on(st.clone(), path, OpenMode::ReadWrite).is_err());
        drop((r1, r2));
        let rep = Vmdk::check_on(st.clone(), path, false).expect("check");
        assert!(rep.is_clean(), "{sub}: {rep}");
        // Creating over it is refused.
        assert!(matches!(
            Vmdk::create_on(st, path, &opts),
            Err(VmdkError::AlreadyExists { .. })
        ));
    }
}
