//! Virtual SMP on vmk's scheduler with a real Debian guest. A test binary of its own: it
//! keeps both host CPUs busy for a minute, which the scheduler measurements of `sched.rs`
//! must not run beside.

mod common;
mod daemon;

use std::time::{Duration, Instant};

use daemon::Daemon;
use vmk_api::client::Client;

/// Virtual SMP on vmk's scheduler: an 8-vCPU Debian guest on this 2-CPU host runs
/// stress-ng's CPU stressors with verification and the lock-heavy futex and mutex
/// stressors, alone and next to a busy 2-vCPU VM, with no failure; its vCPUs accrue
/// co-stop time (more vCPUs than CPUs: the leaders wait for their laggards).
#[test]
fn an_8_vcpu_guest_passes_stress_ng_alone_and_under_contention() {
    let image = common::build_image(
        "sched-stress",
        "#!/bin/sh\nset -e\necho \"nproc $(nproc)\"\n\
         stress-ng --cpu 8 --cpu-method fft --verify -t 6 --metrics-brief\n\
         stress-ng --futex 8 --mutex 8 --verify -t 6 --metrics-brief\n\
         echo 'stress: all passed'\n",
        &["stress-ng"],
    );
    let hog_image = common::build_image(
        "sched-hog",
        "#!/bin/sh\nwhile :; do :; done &\nwhile :; do :; done\n",
        &[],
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(tmp.path(), "", Duration::from_secs(20));
    let c = Client::unix(&d.socket);
    let file = tmp.path().join("smp.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"smp\"\ncpus = 8\nmemory = \"1G\"\n[boot]\nimage = \"{}\"\n",
            image.display()
        ),
    )
    .expect("write definition");
    d.vmk(&["vm", "create", file.to_str().expect("utf-8")]);
    // A busy 2-vCPU VM: the guest image's shell runs two busy loops.
    let hog = tmp.path().join("hog.toml");
    std::fs::write(
        &hog,
        format!(
            "name = \"hog\"\ncpus = 2\nmemory = \"256M\"\n[boot]\nimage = \"{}\"\n",
            hog_image.display()
        ),
    )
    .expect("write definition");
    d.vmk(&["vm", "create", hog.to_str().expect("utf-8")]);
    for contended in [false, true] {
        if contended {
            d.vmk(&["vm", "start", "hog"]);
        }
        let t0 = Instant::now();
        d.vmk(&["vm", "start", "smp"]);
        let info = d.wait_ended(&["smp"], Duration::from_secs(300));
        let took = t0.elapsed();
        let log = d.console("smp");
        let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
        assert!(log.contains("nproc 8"), "{tail}");
        assert!(
            log.contains("stress: all passed"),
            "contended {contended}: {tail}"
        );
        assert!(
            !log.contains("failed: 1") && !log.contains("FAIL"),
            "{tail}"
        );
        assert_eq!(info[0]["last_exit"]["status"], 0, "{:?}\n{tail}", info[0]);
        let m = c.metrics().expect("metrics");
        let vm = m.vms.iter().find(|v| v.name == "smp").expect("smp metrics");
        let costop: u64 = vm.vcpus.iter().map(|v| v.costop_ns).sum();
        let used: u64 = vm.vcpus.iter().map(|v| v.cpu_time_ns).sum();
        eprintln!(
            "8-vCPU stress-ng run (contended: {contended}) took {took:?}: used {:.1} s, \
             co-stop {:.1} s",
            used as f64 / 1e9,
            costop as f64 / 1e9
        );
        assert!(costop > 0, "no co-stop time with 8 vCPUs on 2 CPUs");
    }
    d.vmk(&["vm", "poweroff", "hog"]);
    d.stop();
}
