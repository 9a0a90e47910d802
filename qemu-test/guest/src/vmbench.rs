// SPDX-License-Identifier: GPL-2.0

//! Linux L2 guests under KVM inside the test guest: `l2_boot` (the `make check` smoke test),
//! `bench_vm` (`make bench-vm`) and `l2_work` (what runs inside each L2 of `bench_vm`).
//!
//! The L2s are Debian's `qemu-system-x86_64 -accel kvm`, which `mkinitramfs` copies into the
//! initramfs with its libraries and firmware, booting the test kernel itself (`/l2/bzImage`) with
//! a small initramfs of its own (`/l2/initramfs.cpio.gz`: busybox, this binary, `l2-init`). QEMU's
//! `mem-merge` (on by default) makes guest memory `MADV_MERGEABLE`, so KSM merges what the L2s
//! hold in common. Each L2's serial console is QEMU's stdin and stdout: `bench_vm` sends it one
//! command per line and reads one `L2R` line back per command (`l2_work`).
//!
//! `bench_vm` prints one CSV record per measurement, prefixed with `BENCHVM,`;
//! `scripts/bench-vm-report` turns them into `Documentation/benchmarks-vm.md`. What is measured
//! and why is described there and in `Documentation/kvm.rst` ("Where change_pte pays").

use crate::bench::{cpu_ns, ksmd_pid};
use crate::ksm;
use crate::kvm::{load_kvm, read_trimmed, set_change_pte};
use crate::mem::{Mapping, PAGE};
use crate::util::check;
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const L2_KERNEL: &str = "/l2/bzImage";
const L2_INITRD: &str = "/l2/initramfs.cpio.gz";
/// What `l2-init` prints first; the smoke test passes only if it arrives.
const HELLO: &str = "shadowpt-l2: hello from the L2";
const KVM_DEBUGFS: &str = "/sys/kernel/debug/kvm";
const THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// A `shadowpt.NAME=VALUE` parameter from the kernel command line, or `default`.
fn param(name: &str, default: usize) -> Result<usize, String> {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let key = format!("shadowpt.{name}=");
    match cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&key))
        .last()
    {
        Some(v) => v.parse().map_err(|_| format!("bad {key}{v}")),
        None => Ok(default),
    }
}

/// The L1's TSC rate in kHz (`cpu MHz` of /proc/cpuinfo, which is `cpu_khz` without APERF/MPERF,
/// as under TCG), which KVM gives its L2s unscaled.
fn tsc_khz() -> Result<u64, String> {
    let info = fs::read_to_string("/proc/cpuinfo").map_err(|e| format!("/proc/cpuinfo: {e}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))
        .and_then(|v| {
            v.trim_start_matches([' ', '\t', ':'])
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|mhz| (mhz * 1000.0) as u64)
        .ok_or_else(|| "no cpu MHz in /proc/cpuinfo".to_string())
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// One L2: a QEMU process.

struct L2 {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// Its VM's directory in KVM's debugfs (`<pid>-<fd>`), found once QEMU created the VM.
    debugfs: Option<PathBuf>,
    started: Instant,
}

/// Echoes every line of `r` to our stdout as `NAME: line`, and sends it on `tx` (if any).
fn pump(r: impl Read + Send + 'static, name: String, tx: Option<std::sync::mpsc::Sender<String>>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
            // The L2's own records are noise on the console; everything else is shown.
            if !line.starts_with("L2R ") {
                println!("{name}: {line}");
            }
            if let Some(tx) = &tx {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
}

impl L2 {
    /// Starts QEMU: an L2 of `mem_mib` MiB, one vCPU, the test kernel with `append`.
    fn start(name: &str, mem_mib: usize, append: &str) -> Result<Self, String> {
        for f in [QEMU, L2_KERNEL, L2_INITRD] {
            check(fs::metadata(f).is_ok(), || {
                format!("{f} missing: this initramfs has no L2 payload (qemu-test/mkinitramfs)")
            })?;
        }
        // The L2 kernel (no KVM_GUEST, so no kvm-clock) cannot calibrate its TSC against the
        // emulated PIT or HPET under nested TCG and falls back to the HPET, whose every read is
        // an exit to QEMU: tell it the TSC's rate, which is the L1's.
        let append = format!(
            "console=ttyS0 quiet panic=-1 kunit.enable=0 tsc=reliable tsc_early_khz={} {append}",
            tsc_khz()?
        );
        let mem = format!("{mem_mib}");
        let mut cmd = Command::new(QEMU);
        cmd.args([
            "-M",
            "pc,mem-merge=on",
            "-accel",
            "kvm",
            "-cpu",
            "qemu64",
            "-smp",
            "1",
        ])
        .args([
            "-m",
            &mem,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args([
            "-serial",
            "stdio",
            "-no-reboot",
            "-bios",
            "/usr/share/qemu/qboot.rom",
        ])
        .args([
            "-kernel", L2_KERNEL, "-initrd", L2_INITRD, "-append", &append,
        ])
        // A triple fault or an emulation error is logged (the L2 prints nothing then).
        .args([
            "-d",
            "guest_errors,cpu_reset",
            "-D",
            &format!("/tmp/{name}.qemu.log"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("{name}: {QEMU}: {e}"))?;
        let (tx, rx) = channel();
        pump(
            child.stdout.take().ok_or("no stdout")?,
            name.to_string(),
            Some(tx),
        );
        pump(
            child.stderr.take().ok_or("no stderr")?,
            format!("{name} (qemu stderr)"),
            None,
        );
        let stdin = child.stdin.take().ok_or("no stdin")?;
        Ok(L2 {
            name: name.to_string(),
            child,
            stdin,
            lines: rx,
            debugfs: None,
            started: Instant::now(),
        })
    }

    /// Waits for a line starting with `prefix`; fails on an `L2ERR` line, QEMU's exit or after
    /// `timeout`.
    fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let t0 = Instant::now();
        loop {
            let left = timeout.saturating_sub(t0.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(l) if l.starts_with("L2ERR") => {
                    return Err(format!("{}: {l}", self.name));
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: no line starting with {prefix:?} within {timeout:?}",
                        self.name
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let gone = self.gone();
                    return Err(format!(
                        "{}: QEMU's output ended before a line starting with {prefix:?}{gone}",
                        self.name
                    ));
                }
            }
        }
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("{}: sending {line:?}: {e}", self.name))
    }

    /// The `L2R CMD k=v ...` reply to `cmd`, as numbers by key.
    fn reply(&mut self, cmd: &str, timeout: Duration) -> Result<HashMap<String, u64>, String> {
        let word = cmd.split_whitespace().next().unwrap_or(cmd);
        let l = self.expect(&format!("L2R {word} "), timeout)?;
        let mut m = HashMap::new();
        for kv in l.split_whitespace().skip(2) {
            if let Some((k, v)) = kv.split_once('=') {
                if let Ok(v) = v.parse() {
                    m.insert(k.to_string(), v);
                }
            }
        }
        if m.get("bad").copied().unwrap_or(0) != 0 {
            return Err(format!("{}: the L2 read wrong data: {l}", self.name));
        }
        Ok(m)
    }

    /// Waits up to `timeout` for QEMU to exit.
    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(st);
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "{}: QEMU did not exit within {timeout:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether QEMU has exited, and how, with the end of its log: for error messages.
    fn gone(&mut self) -> String {
        std::thread::sleep(Duration::from_millis(200));
        let st = match self.child.try_wait() {
            Ok(Some(st)) => format!("; QEMU exited: {st}"),
            _ => "; QEMU still runs".to_string(),
        };
        let log = fs::read_to_string(format!("/tmp/{}.qemu.log", self.name)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{st}; its -d log ends:\n{}", tail.join("\n"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The VM's debugfs directory: the one `<pid>-<fd>` entry of this QEMU.
    fn debugfs(&mut self) -> Result<PathBuf, String> {
        if let Some(d) = &self.debugfs {
            return Ok(d.clone());
        }
        let prefix = format!("{}-", self.pid());
        let dirs: Vec<PathBuf> = fs::read_dir(KVM_DEBUGFS)
            .map_err(|e| format!("{KVM_DEBUGFS}: {e}"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        check(dirs.len() == 1, || {
            format!(
                "{}: {} VMs of pid {} in {KVM_DEBUGFS}",
                self.name,
                dirs.len(),
                self.pid()
            )
        })?;
        self.debugfs = Some(dirs[0].clone());
        Ok(dirs[0].clone())
    }

    /// KVM's counters for this VM (vCPU stats summed over its vCPUs).
    fn stats(&mut self) -> Result<Stats, String> {
        let d = self.debugfs()?;
        if !d.exists() {
            let gone = self.gone();
            return Err(format!("{}: its VM is gone{gone}", self.name));
        }
        let rd = |name: &str| -> Result<u64, String> {
            let p = d.join(name);
            fs::read_to_string(&p)
                .map_err(|e| format!("{}: {e} (a KVM without the series' stats?)", p.display()))?
                .trim()
                .parse()
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        Ok(Stats {
            pf_taken: rd("pf_taken")?,
            exits: rd("exits")?,
            updated: rd("change_pte_updated")?,
            zapped: rd("change_pte_zapped")?,
            pages_2m: rd("pages_2m")?,
        })
    }

    /// AnonHugePages of the QEMU process, kB.
    fn anon_huge_kb(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("AnonHugePages:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for L2 {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Stats {
    pf_taken: u64,
    exits: u64,
    updated: u64,
    zapped: u64,
    /// Huge SPTEs now (not a delta).
    pages_2m: u64,
}

impl Stats {
    fn since(&self, b: &Stats) -> Stats {
        Stats {
            pf_taken: self.pf_taken - b.pf_taken,
            exits: self.exits - b.exits,
            updated: self.updated - b.updated,
            zapped: self.zapped - b.zapped,
            pages_2m: self.pages_2m,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `l2_boot`: the smoke test.

/// Boots one L2 under KVM that prints a line and powers off: QEMU, its libraries and firmware,
/// KVM on AMD SVM under TCG and the L2's kernel and initramfs all work. Fails unless the line
/// arrives and QEMU exits 0.
pub fn l2_boot(_args: &[String]) -> Result<(), String> {
    load_kvm(true)?;
    let t0 = Instant::now();
    let mut l2 = L2::start("l2", 128, "shadowpt_l2.mode=smoke")?;
    let line = l2.expect(HELLO, Duration::from_secs(150))?;
    let st = l2.wait(Duration::from_secs(30))?;
    check(st.success(), || {
        format!("QEMU exited with {st} after the L2's line")
    })?;
    println!(
        "l2_boot: the L2 said {:?} after {:.1} s; QEMU exited 0 after {:.1} s",
        line.trim_start_matches(HELLO)
            .trim_start_matches(':')
            .trim(),
        l2.started
            .elapsed()
            .as_secs_f64()
            .min(t0.elapsed().as_secs_f64()),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `bench_vm`: the L1 side.

/// KSM's scan rates: the kernel's defaults, and an aggressive one (ksmd never sleeps).
const RATES: [(&str, &str, &str); 2] = [("aggressive", "2000", "0"), ("default", "100", "20")];
const VMS: usize = 2;

struct Conf {
    reps: usize,
    mem: usize,
    anon: usize,
    file: usize,
    build: usize,
    /// Seconds of (a)'s window.
    window: usize,
}

/// What KSM did in one phase (global, not per VM).
#[derive(Default, Clone, Copy)]
struct Ksm {
    wall_ms: u64,
    ksmd_ns: u64,
    full_scans: u64,
    sharing: u64,
    /// pages_unshared: pages KSM scanned and could not merge (yet).
    unshared: u64,
}

struct KsmRun {
    ksmd: libc::pid_t,
    cpu0: u64,
    scans0: u64,
    t0: Instant,
}

impl KsmRun {
    fn start(rate: usize) -> Result<Self, String> {
        let (_, pages, sleep) = RATES[rate];
        ksm::write("pages_to_scan", pages)?;
        ksm::write("sleep_millisecs", sleep)?;
        let ksmd = ksmd_pid()?;
        let r = KsmRun {
            ksmd,
            cpu0: cpu_ns(ksmd)?,
            scans0: ksm::read("full_scans")?,
            t0: Instant::now(),
        };
        ksm::write("run", "1")?;
        Ok(r)
    }

    fn scans(&self) -> Result<u64, String> {
        Ok(ksm::read("full_scans")? - self.scans0)
    }

    /// Stops ksmd (`run` = 0: merged pages stay merged).
    fn stop(self) -> Result<Ksm, String> {
        ksm::write("run", "0")?;
        Ok(Ksm {
            wall_ms: ms(self.t0.elapsed()),
            ksmd_ns: cpu_ns(self.ksmd)? - self.cpu0,
            full_scans: self.scans()?,
            sharing: ksm::read("pages_sharing")?,
            unshared: ksm::read("pages_unshared")?,
        })
    }

    /// Waits until ksmd completed `n` more full scans.
    fn wait_scans(&self, n: u64, timeout: Duration) -> Result<(), String> {
        while self.scans()? < n {
            check(self.t0.elapsed() < timeout, || {
                format!("KSM did not make {n} full scans within {timeout:?}")
            })?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until ksmd completed 3 more full scans: new content needs two (the first only
    /// records a page's checksum) and the scan under way when it started may have been past it.
    fn wait_merged(&self, timeout: Duration) -> Result<(), String> {
        self.wait_scans(3, timeout)
    }
}

/// One configuration's VMs and labels.
struct Run<'a> {
    vms: Vec<L2>,
    thp: &'a str,
    cpte: &'a str,
    conf: &'a Conf,
}

const MERGE_TIMEOUT: Duration = Duration::from_secs(300);
const CMD_TIMEOUT: Duration = Duration::from_secs(300);

impl Run<'_> {
    fn stats(&mut self) -> Result<Vec<Stats>, String> {
        self.vms.iter_mut().map(|v| v.stats()).collect()
    }

    /// Every L2's statistics now, less `before`.
    fn stats_since(&mut self, before: &[Stats]) -> Result<Vec<Stats>, String> {
        Ok(self
            .stats()?
            .iter()
            .zip(before)
            .map(|(a, b)| a.since(b))
            .collect())
    }

    /// Sends `cmd` to every L2, then collects their replies.
    fn all(&mut self, cmd: &str) -> Result<Vec<HashMap<String, u64>>, String> {
        for v in &mut self.vms {
            v.send(cmd)?;
        }
        self.vms
            .iter_mut()
            .map(|v| v.reply(cmd, CMD_TIMEOUT))
            .collect()
    }

    /// Prints one `vm_phase` record per VM.
    fn record(
        &self,
        workload: &str,
        rate: &str,
        rep: usize,
        replies: &[HashMap<String, u64>],
        deltas: &[Stats],
        wall_ms: u64,
        k: Ksm,
    ) {
        for (i, d) in deltas.iter().enumerate() {
            let r = replies.get(i);
            let g = |key: &str| r.and_then(|m| m.get(key)).copied().unwrap_or(0);
            println!(
                "BENCHVM,vm_phase,{workload},{},{},{rate},{rep},{i},{},{},{},{},{},{},{},{},{},{},{},{},{wall_ms},{},{},{},{},{}",
                self.thp,
                self.cpte,
                g("ns"),
                g("pages"),
                g("p50"),
                g("p99"),
                g("slow1"),
                g("max"),
                g("passes"),
                d.pf_taken,
                d.exits,
                d.updated,
                d.zapped,
                d.pages_2m,
                k.ksmd_ns,
                k.full_scans,
                k.sharing,
                self.vms[i].anon_huge_kb(),
                k.unshared,
            );
        }
    }

    /// KSM at `rate` until merged, with the L2s idle.
    fn merge(&mut self, workload: &str, rate: usize, rep: usize) -> Result<(), String> {
        let s0 = self.stats()?;
        let k = KsmRun::start(rate)?;
        k.wait_merged(MERGE_TIMEOUT)?;
        let k = k.stop()?;
        let d = self.stats_since(&s0)?;
        self.record(workload, RATES[rate].0, rep, &[], &d, k.wall_ms, k);
        Ok(())
    }

    /// An L2 command with KSM stopped.
    fn step(&mut self, workload: &str, cmd: &str, rate: usize, rep: usize) -> Result<(), String> {
        let s0 = self.stats()?;
        let t0 = Instant::now();
        let r = self.all(cmd)?;
        let wall = ms(t0.elapsed());
        let d = self.stats_since(&s0)?;
        self.record(workload, RATES[rate].0, rep, &r, &d, wall, Ksm::default());
        Ok(())
    }

    /// (a): the L2s read their working set pass after pass for `conf.window` seconds while KSM
    /// at `rate` runs. Fresh content needs two looks by ksmd before it can merge (the first
    /// records its checksum), so an idle aggressive scan up to the next full-scan boundary comes
    /// first (`prescan`, recorded on its own: it merges part of what it scanned twice); the
    /// window then merges more, read by the L2s as it happens.
    fn read_while_merging(&mut self, rate: usize, rep: usize) -> Result<(), String> {
        let s0 = self.stats()?;
        let k = KsmRun::start(0)?;
        k.wait_scans(1, MERGE_TIMEOUT)?;
        let k = k.stop()?;
        let s1 = self.stats()?;
        let d: Vec<Stats> = s1.iter().zip(&s0).map(|(a, b)| a.since(b)).collect();
        self.record("prescan", RATES[rate].0, rep, &[], &d, k.wall_ms, k);
        let t0 = Instant::now();
        for v in &mut self.vms {
            v.send("readloop")?;
        }
        for v in &mut self.vms {
            v.expect("L2R readloop-started", CMD_TIMEOUT)?;
        }
        let k = KsmRun::start(rate)?;
        std::thread::sleep(Duration::from_secs(self.conf.window as u64));
        let k = k.stop()?;
        for v in &mut self.vms {
            v.send("stop")?;
        }
        let r: Vec<_> = self
            .vms
            .iter_mut()
            .map(|v| v.reply("readloop", CMD_TIMEOUT))
            .collect::<Result<_, _>>()?;
        let wall = ms(t0.elapsed());
        let d = self.stats_since(&s1)?;
        self.record("read", RATES[rate].0, rep, &r, &d, wall, k);
        Ok(())
    }

    /// (c): the L2s run the build-like job while KSM at `rate` runs.
    fn build(&mut self, rate: usize, rep: usize) -> Result<(), String> {
        let s0 = self.stats()?;
        let t0 = Instant::now();
        let k = KsmRun::start(rate)?;
        let r = self.all(&format!("build {}", self.conf.build))?;
        let k = k.stop()?;
        let wall = ms(t0.elapsed());
        let d = self.stats_since(&s0)?;
        self.record("build", RATES[rate].0, rep, &r, &d, wall, k);
        Ok(())
    }
}

/// One configuration: THP `thp` for guest memory, `kvm.change_pte` = `cpte`, VMS fresh L2s.
fn config(conf: &Conf, thp: &str, cpte: &str) -> Result<(), String> {
    fs::write(THP, thp).map_err(|e| format!("{THP}={thp}: {e}"))?;
    set_change_pte(cpte == "Y")?;
    ksm::write("run", "2")?;
    ksm::write("run", "0")?;
    println!("bench_vm: THP {thp}, kvm.change_pte={cpte}: booting {VMS} L2s");
    let append = format!(
        "shadowpt_l2.mode=work shadowpt_l2.anon={} shadowpt_l2.file={}",
        conf.anon, conf.file
    );
    let mut vms = Vec::new();
    for i in 0..VMS {
        vms.push(L2::start(&format!("l2-{i}"), conf.mem, &append)?);
    }
    let mut run = Run {
        vms,
        thp,
        cpte,
        conf,
    };
    for (i, v) in run.vms.iter_mut().enumerate() {
        v.expect("L2R ready", Duration::from_secs(600))?;
        let s = v.stats()?;
        println!(
            "BENCHVM,vm_boot,{thp},{cpte},{i},{},{},{}",
            ms(v.started.elapsed()),
            s.pages_2m,
            v.anon_huge_kb()
        );
    }
    // Boot, fill, idle while KSM merges everything the L2s have in common: their kernels, the
    // initramfs, the working sets (b's first half, once per boot).
    run.step("fill", "fill 1", 0, 0)?;
    run.merge("bootmerge", 0, 0)?;
    // The first re-touch after the first merge: with THP, where KSM split the huge pages it
    // merged into (an unflagged invalidation of each 2 MiB, which zaps in both modes).
    run.step("firsttouch", "touch", 0, 0)?;
    let mut seed = 2;
    for rep in 1..=conf.reps {
        println!("bench_vm: THP {thp}, kvm.change_pte={cpte}: rep {rep}");
        // (b) New identical content, idle while KSM merges it, then re-touch all of it.
        run.step("fill", &format!("fill {seed}"), 0, rep)?;
        seed += 1;
        run.merge("merge", 0, rep)?;
        run.step("touch", "touch", 0, rep)?;
        // (d) Write every merged page (COW breaks in the L2's own faults): new content.
        run.step("write", &format!("fill {seed}"), 0, rep)?;
        seed += 1;
        for rate in 0..RATES.len() {
            if rate > 0 {
                run.step("fill", &format!("fill {seed}"), rate, rep)?;
                seed += 1;
            }
            // (a) Read-mostly while KSM merges the new content at this rate.
            run.read_while_merging(rate, rep)?;
            // (c) The build-like job with KSM running at this rate.
            run.build(rate, rep)?;
        }
    }
    for v in &mut run.vms {
        v.send("quit")?;
    }
    for v in &mut run.vms {
        let st = v.wait(Duration::from_secs(60))?;
        check(st.success(), || {
            format!("{}: QEMU exited with {st}", v.name)
        })?;
    }
    Ok(())
}

/// `make bench-vm`: every workload in VMS identical L2s, for THP never/always and
/// kvm.change_pte Y/N, `shadowpt.bench_vm_reps` repetitions at each KSM rate.
pub fn bench_vm(_args: &[String]) -> Result<(), String> {
    let conf = Conf {
        reps: param("bench_vm_reps", 7)?,
        mem: param("bench_vm_mem", 192)?,
        anon: param("bench_vm_anon", 2048)?,
        file: param("bench_vm_file", 1024)?,
        build: param("bench_vm_build", 12)?,
        window: param("bench_vm_window", 10)?,
    };
    let thps: Vec<&str> = match param("bench_vm_thp", 2)? {
        0 => vec!["never"],
        1 => vec!["always"],
        _ => vec!["never", "always"],
    };
    load_kvm(true)?;
    ksm::write("run", "2")?;
    if fs::metadata("/sys/kernel/mm/ksm/smart_scan").is_ok() {
        ksm::write("smart_scan", "0")?;
    }
    ksm::write("use_zero_pages", "0")?;
    let uname = read_trimmed("/proc/sys/kernel/osrelease")?;
    println!(
        "BENCHVM,vm_machine,{uname},{VMS},{},{},{},{},{},{}",
        conf.mem, conf.anon, conf.file, conf.reps, conf.build, conf.window
    );
    let cptes: Vec<&str> = match param("bench_vm_cpte", 2)? {
        0 => vec!["Y"],
        1 => vec!["N"],
        _ => vec!["Y", "N"],
    };
    // A configuration whose L2s fail (an L2 that dies, a command that times out) is reported,
    // as a record the report shows first, and the others still run.
    for thp in thps {
        for cpte in &cptes {
            if let Err(e) = config(&conf, thp, cpte) {
                println!("bench_vm: THP {thp}, kvm.change_pte={cpte}: FAILED: {e}");
                let msg: String = e
                    .chars()
                    .take(300)
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                println!("BENCHVM,vm_error,{thp},{cpte},{msg}");
            }
        }
    }
    println!("bench_vm: done");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `l2_work`: inside each L2.

/// Word `j` of page `i` of the working set for `seed`: the same in every L2, different in every
/// page (so that KSM shares each page between the L2s, not within one).
fn word(seed: u64, i: usize, j: usize) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(((i as u64) << 12) | j as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const WORDS: usize = PAGE / 8;

/// Latency percentiles of `lat` (ns), as `L2R` fields.
fn percentiles(lat: &mut [u64]) -> String {
    if lat.is_empty() {
        return String::new();
    }
    lat.sort_unstable();
    let n = lat.len();
    let top = &lat[n * 99 / 100..];
    format!(
        "p50={} p99={} slow1={} max={}",
        lat[n / 2],
        lat[n * 99 / 100],
        top.iter().sum::<u64>() / top.len() as u64,
        lat[n - 1]
    )
}

struct WorkingSet {
    /// Anonymous memory, then a tmpfs file's pages (shared mapping).
    maps: Vec<Mapping>,
    seed: u64,
}

impl WorkingSet {
    fn pages(&self) -> impl Iterator<Item = *mut u64> + '_ {
        self.maps
            .iter()
            .flat_map(|m| (0..m.pages()).map(move |i| m.page_addr(i) as *mut u64))
    }

    fn count(&self) -> usize {
        self.maps.iter().map(|m| m.pages()).sum()
    }

    /// Writes content `seed` into every page, timing each page.
    fn fill(&mut self, seed: u64) -> String {
        let mut lat = Vec::with_capacity(self.count());
        let t0 = Instant::now();
        for (i, p) in self.pages().enumerate() {
            let t = Instant::now();
            for j in 0..WORDS {
                // SAFETY: `p` is a page of our read-write mappings.
                unsafe { p.add(j).write_volatile(word(seed, i, j)) };
            }
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let ns = t0.elapsed().as_nanos();
        self.seed = seed;
        format!("ns={ns} pages={} {}", lat.len(), percentiles(&mut lat))
    }

    /// Reads every page once; returns (pages with wrong content, per-page ns if `timed`).
    fn read(&self, timed: bool) -> (u64, Vec<u64>) {
        let mut bad = 0;
        let mut lat = Vec::with_capacity(if timed { self.count() } else { 0 });
        for (i, p) in self.pages().enumerate() {
            let t = timed.then(Instant::now);
            let mut ok = true;
            for j in 0..WORDS {
                // SAFETY: `p` is a page of our readable mappings.
                ok &= unsafe { p.add(j).read_volatile() } == word(self.seed, i, j);
            }
            if let Some(t) = t {
                lat.push(t.elapsed().as_nanos() as u64);
            }
            bad += u64::from(!ok);
        }
        (bad, lat)
    }
}

/// Whether a byte is waiting on stdin.
fn stdin_ready() -> bool {
    let mut p = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// The L2's side of `bench_vm`: a working set of `shadowpt_l2.anon` anonymous and
/// `shadowpt_l2.file` tmpfs pages; commands on stdin, one `L2R` line per command on stdout.
pub fn l2_work(_args: &[String]) -> Result<(), String> {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| e.to_string())?;
    let arg = |k: &str| -> usize {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("shadowpt_l2.{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (anon, file) = (arg("anon"), arg("file"));
    let mut maps = vec![Mapping::anon(anon.max(1))?];
    if file > 0 {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open("/tmp/working-set")
            .map_err(|e| format!("/tmp/working-set: {e}"))?;
        f.set_len((file * PAGE) as u64).map_err(|e| e.to_string())?;
        maps.push(Mapping::map(file, libc::MAP_SHARED, f.as_raw_fd())?);
    }
    let mut ws = WorkingSet { maps, seed: 0 };
    let clock = read_trimmed("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .unwrap_or_else(|_| "unknown".into());
    println!("L2R ready pages={} clocksource={clock}", ws.count());
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let cmd = words.first().copied().unwrap_or("?").to_string();
        let reply = match words.as_slice() {
            ["fill", seed] => match seed.parse() {
                Ok(s) => ws.fill(s),
                Err(_) => format!("bad seed {seed}"),
            },
            ["touch"] => {
                let t0 = Instant::now();
                let (bad, mut lat) = ws.read(true);
                let ns = t0.elapsed().as_nanos();
                format!(
                    "ns={ns} pages={} bad={bad} {}",
                    lat.len(),
                    percentiles(&mut lat)
                )
            }
            ["readloop"] => {
                println!("L2R readloop-started");
                let t0 = Instant::now();
                let (mut passes, mut bad) = (0u64, 0);
                let mut pass_ns = Vec::new();
                while !(stdin_ready() || !stdin.buffer().is_empty()) {
                    let t = Instant::now();
                    bad += ws.read(false).0;
                    pass_ns.push(t.elapsed().as_nanos() as u64);
                    passes += 1;
                }
                let ns = t0.elapsed().as_nanos();
                let mut stop = String::new();
                let _ = stdin.read_line(&mut stop);
                format!(
                    "ns={ns} pages={} passes={passes} bad={bad} {}",
                    passes * ws.count() as u64,
                    percentiles(&mut pass_ns)
                )
            }
            ["build", units] => {
                let t0 = Instant::now();
                let st = Command::new("/bin/l2-build")
                    .arg(units)
                    .stdout(Stdio::null())
                    .status()
                    .map_err(|e| format!("l2-build: {e}"))?;
                let ns = t0.elapsed().as_nanos();
                format!("ns={ns} bad={}", u8::from(!st.success()))
            }
            ["quit"] => return Ok(()),
            _ => format!("bad=1 unknown command {:?}", line.trim()),
        };
        println!("L2R {cmd} {reply}");
        let _ = std::io::stdout().flush();
    }
}
