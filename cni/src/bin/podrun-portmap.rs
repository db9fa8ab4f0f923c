//! `podrun-portmap`: the CNI hostPort plugin. All logic lives in `podrun_cni::portmap`.

fn main() {
    let plugin = podrun_cni::portmap::PortmapPlugin;
    std::process::exit(podrun_cni::skel::plugin_main(
        &plugin,
        "podrun-portmap: podrun's CNI hostPort plugin",
    ));
}
