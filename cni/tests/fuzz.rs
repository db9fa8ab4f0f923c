//! Fuzz targets for the network configuration the CNI plugins and the client read: lists
//! (`.conflist`) and single configurations with their previous results. Seeds are in
//! fuzz/corpus/<target>/; see fuzz/README.md.

#[path = "../../fuzz/harness.rs"]
mod harness;

use harness::{clear_error, fuzz, Target};
use podrun_cni::spec::{CniResult, NetConf, NetworkConfigList, SUPPORTED_VERSIONS};

#[test]
fn cni_conflist() {
    fuzz(Target::new("cni_conflist"), |input| {
        let list = match NetworkConfigList::parse(input) {
            Ok(list) => list,
            Err(e) => return clear_error(e),
        };
        // What the runtime writes back out must read in as the same list.
        let again = serde_json::to_vec(&list).map_err(|e| e.to_string())?;
        match NetworkConfigList::parse(&again) {
            Ok(back) if back == list => Ok(()),
            Ok(back) => Err(format!("re-read as {back:?}")),
            Err(e) => Err(format!("re-reading what was written: {e}")),
        }
    });
}

#[test]
fn cni_conf() {
    fuzz(Target::new("cni_conf"), |input| {
        if let Err(e) = NetworkConfigList::from_single(input) {
            clear_error(e)?;
        }
        let conf = match NetConf::parse(input) {
            Ok(conf) => conf,
            Err(e) => return clear_error(e),
        };
        if let Some(prev) = &conf.prev_result {
            match CniResult::from_value(prev) {
                Ok(result) => {
                    for version in SUPPORTED_VERSIONS {
                        let _ = result.to_value(version);
                    }
                }
                Err(e) => clear_error(e)?,
            }
        }
        Ok(())
    });
}
