// SPDX-License-Identifier: GPL-2.0

//! ABI fuzzing: seeded random ioctls (numbers, sizes, structure contents, pointers) against a
//! live attachment. Every call must succeed or fail with an errno of Documentation/abi.rst; the
//! kernel must not report anything (the harness scans the log) or leak (kmemleak at the end).
//!
//! Pointers handed to the kernel are never into this program's own memory, only into scratch
//! mappings or invalid addresses, so a "successful" random READ cannot corrupt the fuzzer.

use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::stress::Rng;
use crate::util::*;
use std::collections::BTreeMap;

const DOCUMENTED: [i32; 12] = [
    libc::ENOTTY,
    libc::EINVAL,
    libc::EOVERFLOW,
    libc::E2BIG,
    libc::ERANGE,
    libc::EFAULT,
    libc::EACCES,
    libc::EBUSY,
    libc::ENXIO,
    libc::EPERM,
    libc::ENOMEM,
    libc::EINTR,
];

/// `fuzz [CALLS] [SEED]`.
pub fn fuzz(args: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    let calls: usize = args
        .first()
        .map(|a| a.parse().unwrap_or(100_000))
        .unwrap_or(100_000);
    let seed = seed(args.get(1).map(String::as_str))?;
    println!("fuzz: {calls} calls, seed {seed} (rerun: sptest fuzz {calls} {seed})");
    let mut rng = Rng::new(seed);
    // The mirrored memory, a read-only page inside it, a hole after it.
    let mem = Mapping::anon(64)?;
    for i in 0..64 {
        mem.fill(i, i as u8);
    }
    // SAFETY: Unmapping the last page of our own mapping (a hole inside the attached range).
    unsafe { libc::munmap((mem.addr + 63 * PAGE) as *mut libc::c_void, PAGE) };
    Mapping::view(mem.addr + 62 * PAGE, PAGE).mprotect(libc::PROT_READ)?;
    // Scratch memory for argument structures and buffers.
    let scratch = Mapping::anon(512)?;
    let s = Spt::open()?;
    s.attach(mem.addr, 63 * PAGE, MODE_CHANGE_PTE)?;

    let interesting = |rng: &mut Rng| -> u64 {
        match rng.below(14) {
            0 => 0,
            1 => 1,
            2 => PAGE as u64,
            3 => PAGE as u64 - 1,
            4 => mem.addr as u64,
            5 => (mem.addr + rng.below(64) * PAGE) as u64,
            6 => (mem.addr + rng.below(64 * PAGE)) as u64,
            7 => u64::MAX,
            8 => u64::MAX - PAGE as u64 + 1,
            9 => MAX_IO,
            10 => MAX_ATTACH + PAGE as u64,
            11 => (rng.below(70) * PAGE) as u64,
            12 => 1 << 47,
            _ => rng.next(),
        }
    };
    let pointer = |rng: &mut Rng| -> u64 {
        match rng.below(6) {
            0 => 0,
            1 => 8,
            2 => 0xffff_8880_0000_0000,
            3 => (mem.addr + 63 * PAGE) as u64,
            _ => (scratch.addr + PAGE + rng.below(400 * PAGE)) as u64,
        }
    };
    // DETACH is not in this list: it is drawn on its own, rarely (see below).
    let cmds = [
        IOC_ATTACH,
        IOC_FAULT,
        IOC_READ,
        IOC_WRITE,
        IOC_SNAPSHOT,
        IOC_STATS,
    ];
    let mut results: BTreeMap<String, u64> = BTreeMap::new();
    let (mut detached_at, mut reattached) = (None, 0u64);
    for n in 0..calls {
        // The argument structure, in scratch page 0.
        let arg = scratch.addr as u64;
        let mut words = [0u64; 8];
        for w in words.iter_mut() {
            *w = interesting(&mut rng);
        }
        // DETACH rarely (1%), so that most calls meet a live attachment.
        let cmd = if rng.below(100) == 0 {
            IOC_DETACH
        } else {
            cmds[rng.below(cmds.len())]
        };
        let size = ((cmd >> 16) & 0x3fff) as u32;
        // Mostly the right size field, sometimes not.
        let size_field = if rng.below(8) == 0 {
            rng.next() as u32
        } else {
            size
        };
        words[0] = (size_field as u64) | ((rng.below(3) as u64) << 32);
        // Buffer pointers: never into our own memory.
        match cmd {
            IOC_READ | IOC_WRITE => {
                words[3] = words[3] % (4 * PAGE as u64 + 1);
                words[4] = pointer(&mut rng);
            }
            IOC_SNAPSHOT => {
                words[2] %= 70;
                words[3] = pointer(&mut rng);
            }
            _ => {}
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        scratch.put(0, &bytes);
        // Sometimes a wrong number: another nr, size, direction or type byte.
        let cmd = match rng.below(10) {
            0 => cmd ^ (1 << rng.below(32)),
            1 => (cmd & !0xff) | rng.below(256) as u64,
            _ => cmd,
        };
        let argp = match rng.below(20) {
            0 => pointer(&mut rng),
            _ => arg,
        };
        let r = raw_ioctl(s.fd(), cmd, argp as usize);
        let key = match r {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                if !DOCUMENTED.contains(&e) {
                    return Err(format!(
                        "call {n}: cmd {cmd:#x} got undocumented {} (seed {seed})",
                        errname(e)
                    ));
                }
                errname(e)
            }
        };
        *results.entry(key).or_default() += 1;
        // Keep an attachment most of the time: a few calls after a detach (which then meet
        // ENXIO), attach again, alternating the mode.
        if r.is_ok() && cmd == IOC_DETACH {
            detached_at = Some(n);
        }
        if detached_at.is_some_and(|d| n >= d + 3) || (n % 64 == 63 && detached_at.is_none()) {
            if s.try_stats() == Err(libc::ENXIO) {
                s.try_attach(mem.addr, 63 * PAGE, (n % 2) as u32)
                    .map_err(|e| format!("call {n}: re-attach failed: {}", errname(e)))?;
                reattached += 1;
            }
            detached_at = None;
        }
    }
    // The mirrored memory still holds what the process wrote, or what random WRITEs put there;
    // the table must still be coherent.
    if s.try_stats().is_ok() {
        check_no_stale(&s.snapshot(mem.addr, 63)?, "after fuzzing")?;
    }
    let summary: Vec<String> = results.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "fuzz: results: {} (re-attached {reattached} times)",
        summary.join(" ")
    );
    Ok(())
}
