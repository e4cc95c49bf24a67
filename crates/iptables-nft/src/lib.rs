//! kproxy-iptables-nft (under construction).
