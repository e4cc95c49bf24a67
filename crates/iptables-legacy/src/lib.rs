//! kproxy-iptables-legacy (under construction).
