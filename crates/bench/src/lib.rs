//! The parts of kproxy's benchmarks that more than one benchmark program
//! uses: the seeded synthetic cluster ([`synth`]), kube-proxy's nftables
//! layouts as a baseline ([`kpnft`]), and namespaces, timing and memory
//! ([`sys`]). The programs are `kproxy-bench` (`make bench`),
//! `iptables-bench` and `nftables-bench` (`src/bin/`).

pub mod kpnft;
pub mod synth;
pub mod sys;
