//! Unit names: which slice or scope a driver path names, and where systemd puts its
//! cgroup (a slice name's dashes encode its parents).

use super::super::CgroupError;

/// Which unit a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitPath {
    /// A slice: every component, the last one being the unit.
    Slice { slices: Vec<String> },
    /// A scope inside `slice`.
    Scope { slice: String, unit: String },
}

impl UnitPath {
    pub fn parse(path: &str) -> Result<Self, CgroupError> {
        let invalid = |reason: &str| CgroupError::InvalidPath {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        if let Some((slice, rest)) = path.split_once(':') {
            let (prefix, name) = rest
                .split_once(':')
                .ok_or_else(|| invalid("expected <slice>:<prefix>:<name>"))?;
            if !slice.ends_with(".slice") || prefix.is_empty() || name.is_empty() {
                return Err(invalid("expected <slice>:<prefix>:<name>"));
            }
            expand_slice(slice).map_err(|r| invalid(&r))?;
            let unit = format!("{prefix}-{name}.scope");
            check_unit_chars(&unit).map_err(|r| invalid(&r))?;
            return Ok(UnitPath::Scope {
                slice: slice.to_string(),
                unit,
            });
        }
        let slices: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        if slices.is_empty() {
            return Err(invalid("empty path"));
        }
        for s in &slices {
            expand_slice(s).map_err(|r| invalid(&r))?;
        }
        Ok(UnitPath::Slice { slices })
    }

    /// The unit this path names.
    pub fn unit(&self) -> &str {
        match self {
            UnitPath::Slice { slices } => slices.last().map(String::as_str).unwrap_or_default(),
            UnitPath::Scope { unit, .. } => unit,
        }
    }

    /// Where systemd puts the unit's cgroup, relative to a hierarchy's root.
    pub fn fs_path(&self) -> String {
        match self {
            UnitPath::Slice { .. } => expand_slice(self.unit()).unwrap_or_default(),
            UnitPath::Scope { slice, unit } => {
                let base = expand_slice(slice).unwrap_or_default();
                if base.is_empty() {
                    unit.clone()
                } else {
                    format!("{base}/{unit}")
                }
            }
        }
    }
}

fn check_unit_chars(unit: &str) -> Result<(), String> {
    let ok = unit
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'));
    if ok && unit.len() <= 255 {
        Ok(())
    } else {
        Err(format!("{unit:?} is not a valid systemd unit name"))
    }
}

/// "a-b-c.slice" → "a.slice/a-b.slice/a-b-c.slice"; "-.slice" (the root) → "".
pub fn expand_slice(slice: &str) -> Result<String, String> {
    let name = slice
        .strip_suffix(".slice")
        .ok_or_else(|| format!("{slice:?} is not a slice"))?;
    if name == "-" {
        return Ok(String::new());
    }
    check_unit_chars(slice)?;
    if name.is_empty() || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(format!("{slice:?} is not a valid slice name"));
    }
    let mut out = Vec::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out.join("/"))
}
