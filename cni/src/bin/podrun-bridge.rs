//! `podrun-bridge`: the CNI bridge plugin. All logic lives in `podrun_cni::bridge`.

fn main() {
    let plugin = podrun_cni::bridge::BridgePlugin::default();
    std::process::exit(podrun_cni::skel::plugin_main(
        &plugin,
        "podrun-bridge: podrun's CNI bridge plugin",
    ));
}
