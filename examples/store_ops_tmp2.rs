use sandwarden::job::Job;
use std::time::Instant;
fn main() {
    let spec = sandwarden::job::spec::parse(
        br#"{"user_id":"bench","steps":[{"run":{"cmd":"true"}}]}"#,
        &Default::default(),
    )
    .unwrap();
    let n = 20000u64;
    let job = Job::new(1, spec.clone(), 1);
    let t = Instant::now();
    let mut len = 0;
    for _ in 0..n {
        len += serde_json::to_vec(&job).unwrap().len();
    }
    println!(
        "encode {:?} ({} bytes)",
        t.elapsed() / n as u32,
        len / n as usize
    );
    let dir = tempfile::tempdir().unwrap();
    let db = if std::env::var("HT").is_ok() {
        sled::Config::new()
            .path(dir.path())
            .mode(sled::Mode::HighThroughput)
            .open()
            .unwrap()
    } else {
        sled::open(dir.path()).unwrap()
    };
    let a = db.open_tree("a").unwrap();
    let b = db.open_tree("b").unwrap();
    let v = serde_json::to_vec(&job).unwrap();
    let t = Instant::now();
    for i in 0..n {
        a.insert(i.to_be_bytes(), v.as_slice()).unwrap();
    }
    println!("insert 500B {:?}", t.elapsed() / n as u32);
    let t = Instant::now();
    for i in 0..n {
        b.insert(i.to_be_bytes(), &[]).unwrap();
    }
    println!("insert empty {:?}", t.elapsed() / n as u32);
    let t = Instant::now();
    for i in 0..n {
        b.remove(i.to_be_bytes()).unwrap();
    }
    println!("remove {:?}", t.elapsed() / n as u32);
    let t = Instant::now();
    for i in 0..n {
        a.get(i.to_be_bytes()).unwrap();
    }
    println!("get {:?}", t.elapsed() / n as u32);
    let t = Instant::now();
    for _ in 0..n {
        db.generate_id().unwrap();
    }
    println!("generate_id {:?}", t.elapsed() / n as u32);
}
