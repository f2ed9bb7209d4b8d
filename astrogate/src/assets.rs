//! Man pages and shell completions for the package, generated from each program's own command
//! line definition, so they cannot drift from it.
use std::{fs, io, path::Path};

use clap_complete::Shell;

/// Writes `man/NAME.1`, `bash/NAME`, `zsh/_NAME` and `fish/NAME.fish` under `dir`.
pub fn write(mut command: clap::Command, dir: &Path) -> io::Result<()> {
    let name = command.get_name().to_string();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    fs::create_dir_all(dir.join("man"))?;
    fs::write(dir.join(format!("man/{name}.1")), page)?;
    for (shell, file) in [
        (Shell::Bash, format!("bash/{name}")),
        (Shell::Zsh, format!("zsh/_{name}")),
        (Shell::Fish, format!("fish/{name}.fish")),
    ] {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut out = fs::File::create(&path)?;
        clap_complete::generate(shell, &mut command, &name, &mut out);
    }
    Ok(())
}
