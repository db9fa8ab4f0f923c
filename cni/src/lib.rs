//! podrun's Container Network Interface support: the spec's types, host-local
//! compatible IPAM, the netlink and namespace mechanics behind the `podrun-bridge`
//! plugin, and the runtime-side client that loads network configurations and runs
//! plugin chains the way libcni does.

pub mod bridge;
pub mod client;
pub mod exec;
pub mod ipam;
pub mod masq;
pub mod netlink;
pub mod nft;
pub mod ns;
pub mod portmap;
pub mod skel;
pub mod spec;

pub use client::{
    default_conflist, ClientError, Cni, CniConfig, DEFAULT_CACHE_DIR, DEFAULT_CONF_DIR,
};
pub use exec::{find_plugin, DEFAULT_CNI_PATH};
pub use spec::{CniError, CniResult, NetworkConfigList};
