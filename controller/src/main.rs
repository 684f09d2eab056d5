fn main() {
    eprintln!("portcullis: no subcommands yet");
    std::process::exit(2);
}
