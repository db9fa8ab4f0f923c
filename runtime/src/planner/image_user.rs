//! What an image's files say about users and groups, read as the container's merged
//! rootfs would show them (top layer wins), and signal names of the image config.

use std::path::{Path, PathBuf};

pub fn user_in_passwd(layers: &[PathBuf], name: &str) -> Option<(u32, u32)> {
    let text = read_image_file(layers, "etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

pub fn group_in_file(layers: &[PathBuf], name: &str) -> Option<u32> {
    let text = read_image_file(layers, "etc/group")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// Groups of /etc/group that list `user` as a member (supplementary groups from the image).
pub fn member_groups(layers: &[PathBuf], user: &str, uid: u32) -> Vec<u32> {
    let name = if user.is_empty() {
        read_image_file(layers, "etc/passwd").and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[2] == uid.to_string()).then(|| f[0].to_owned())
            })
        })
    } else {
        Some(user.to_owned())
    };
    let (Some(name), Some(text)) = (name, read_image_file(layers, "etc/group")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == name)).then(|| f[2].parse().ok())?
        })
        .collect()
}

/// Read a file of the image as the merged rootfs would show it (top layer wins).
pub fn read_image_file(layers: &[PathBuf], rel: &str) -> Option<String> {
    layers.iter().rev().find_map(|l| {
        let p = crate::rootfs::secure_join(l, Path::new(rel)).ok()?;
        std::fs::read_to_string(p).ok()
    })
}

pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

pub fn user_in_passwd_by_uid(layers: &[PathBuf], uid: u32) -> Option<u32> {
    let text = read_image_file(layers, "etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2] == uid.to_string()).then(|| f[3].parse().ok())?
    })
}
