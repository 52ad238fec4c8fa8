//! `sdhost-fuzz TARGET`: one of `sdhost::fuzz::TARGETS` under AFL++'s persistent mode.
//! `sdhost-fuzz --list` names them.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "--list" || name.is_empty() {
        for target in sdhost::fuzz::TARGETS {
            println!("{:12} {}", target.name, target.input);
        }
        return;
    }
    let Some(target) = sdhost::fuzz::find(&name) else {
        eprintln!("sdhost-fuzz: no target \"{name}\" (sdhost-fuzz --list names them)");
        std::process::exit(2);
    };
    // One thread: libtorch's pools would only slow the fork server down.
    tch::set_num_threads(1);
    afl::fuzz!(|data: &[u8]| (target.run)(data));
}
