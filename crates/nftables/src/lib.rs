//! kproxy-nftables (under construction).
