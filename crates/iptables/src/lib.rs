//! kproxy-iptables (under construction).
