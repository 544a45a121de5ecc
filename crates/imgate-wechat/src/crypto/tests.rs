//! The known-answer vectors of ../shared/wechat/vectors.md, and what must be refused.

use super::*;
use crate::signature::{sign, verify};

const V3_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const V3_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";

#[test]
fn v3_official_decrypt_sample() {
    let c = Cipher::new(V3_KEY).unwrap();
    assert_eq!(hex(&c.key), "69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051");
    assert!(verify(
        "5d197aaffba7e9b25a30732f161a50dee96bd5fa",
        &["spamtest", "1409735669", "1320562132", V3_ENCRYPT]
    ));
    assert!(!verify(
        "5d197aaffba7e9b25a30732f161a50dee96bd5fa",
        &["spamtest", "1409735669", "1320562133", V3_ENCRYPT]
    ));
    let msg = c.decrypt_for(V3_ENCRYPT, "wx2c2769f8efd9abc2").unwrap();
    assert_eq!(
        msg,
        "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n<CreateTime>1409735668</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[abcdteT]]></Content>\n<MsgId>6054768590064713728</MsgId>\n</xml>"
    );
    assert_eq!(msg.len(), 280);
    assert!(matches!(c.decrypt_for(V3_ENCRYPT, "wx0000000000000000"), Err(CryptoError::WrongAppId { .. })));
}

#[test]
fn v4_deterministic_encryption_counts_utf8_bytes() {
    let c = Cipher::new(V3_KEY).unwrap();
    let random = *b"aaaabbbbccccdddd";
    let enc = c.encrypt_with("我是中文abcd123", "wxb11529c136998cb6", random);
    assert_eq!(
        enc,
        "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
    );
    assert_eq!(c.decrypt_for(&enc, "wxb11529c136998cb6").unwrap(), "我是中文abcd123");
    let reply = "<xml><ToUserName><![CDATA[oia2Tj我是中文jewbmiOUlr6X-1crbLOvLw]]></ToUserName><FromUserName><![CDATA[gh_7f083739789a]]></FromUserName><CreateTime>1407743423</CreateTime><MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[eYJ1MbwPRJtOvIEabaxHs7TX2D-HV71s79GUxqdUkjm6Gs2Ed1KF3ulAOA9H1xG0]]></MediaId><Title><![CDATA[testCallBackReplyVideo]]></Title><Description><![CDATA[testCallBackReplyVideo]]></Description></Video></xml>";
    let enc = c.encrypt_with(reply, "wxb11529c136998cb6", random);
    assert_eq!(
        enc,
        "jn1L23DB+6ELqJ+6bruv23M2GmYfkv0xBh2h+XTBOKVKcgDFHle6gqcZ1cZrk3e1qjPQ1F4RsLWzQRG9udbKWesxlkupqcEcW7ZQweImX9+wLMa0GaUzpkycA8+IamDBxn5loLgZpnS7fVAbExOkK5DYHBmv5tptA9tklE/fTIILHR8HLXa5nQvFb3tYPKAlHF3rtTeayNf0QuM+UW/wM9enGIDIJHF7CLHiDNAYxr+r+OrJCmPQyTy8cVWlu9iSvOHPT/77bZqJucQHQ04sq7KZI27OcqpQNSto2OdHCoTccjggX5Z9Mma0nMJBU+jLKJ38YB1fBIz+vBzsYjrTmFQ44YfeEuZ+xRTQwr92vhA9OxchWVINGC50qE/6lmkwWTwGX9wtQpsJKhP+oS7rvTY8+VdzETdfakjkwQ5/Xka042OlUb1/slTwo4RscuQ+RdxSGvDahxAJ6+EAjLt9d8igHngxIbf6YyqqROxuxqIeIch3CssH/LqRs+iAcILvApYZckqmA7FNERspKA5f8GoJ9sv8xmGvZ9Yrf57cExWtnX8aCMMaBropU/1k+hKP5LVdzbWCG0hGwx/dQudYR/eXp3P0XxjlFiy+9DMlaFExWUZQDajPkdPrEeOwofJb"
    );
    // The Java sample's negative: a wrong signature fails the check.
    assert!(!verify("12345", &["pamtest", "1409304348", "xxxxxx", &enc]));
}

#[test]
fn v5_wechatpy_vectors() {
    let c = Cipher::new("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").unwrap();
    let echo = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q==";
    assert!(verify("dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", &["123456", "1411443780", "437374425", echo]));
    assert!(!verify(
        "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96",
        &["123456", "1411443780", "437374424", echo]
    ));
    assert_eq!(c.decrypt_for(echo, "wx49f0ab532d5d035a").unwrap(), "5927782489442352469");
    let plain = "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>";
    let enc = c.encrypt_with(plain, "wx49f0ab532d5d035a", *b"1234567890123456");
    assert_eq!(
        enc,
        "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURnAtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oyKQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkdQ39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
    );
    assert_eq!(
        sign(&["123456", "1411525903", "461056294", &enc]),
        "407518b7649e86ef23978113f92d27afa9296533"
    );
    let encrypted = "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=";
    assert!(verify(
        "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
        &["123456", "1411525903", "461056294", encrypted]
    ));
    assert_eq!(
        c.decrypt_for(encrypted, "wx49f0ab532d5d035a").unwrap(),
        "<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n<FromUserName><![CDATA[messense]]></FromUserName>\n<CreateTime>1411525903</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n<MsgId>4363689963896700987</MsgId>\n<AgentID>1</AgentID>\n</xml>"
    );
}

const V6_ENCRYPT: &str = "ZBY4h9SD1Y/v+ighMGU4yHSVWyMuf2UdQQfFuB8S/SY5il9MynR1rtKIJDG871vOqaCs0FVje6bX0VyhvL02PG7FXjRR+rAyiwVv7T7nBGgamkPeOv4n/jXgFQnY6NEt3Zym09t4aI+21pDcE6uN6JzcC+hxw5sBfVyza3NHyuLiyhvalsFbasA4HNcnK+4/3eZLMo+e6yvHUsY4WhmZWW5u5mHcDZm1jtI2fUtzod6Sx7PrCOhm+zUO1I98OD0EmICxHHMjMkGmSFuGhG8vXRKaRavzvV/fkscZK1HjW+XJOV0c9wYDZT+/LTjDS/yx5KkM5lIksiw57DsCro9gvmE1WdvB3bw3m+5ie2x1ZRSuh6ik1rbMTiXgJXt0MnbV8VsyPe1zhkbug1cwdhT9zcOTieb0oyiIl3wSAEkNNBNBaWB+78V1hM/ngMoZgKaaasJUCGtPH/rN+YnxGicDOg==";

#[test]
fn v6_pad_24_and_the_receive_id() {
    let c = Cipher::new("CyjBvGm4tJNmcThkeL5Wajzom4jKlBygKtpTkYeqsnE").unwrap();
    let parts = ["pcoLldqMu2WQQtYBeDX5HiXPsBFlTnDM", "1623301925", "1624217036", V6_ENCRYPT];
    assert!(verify("d728d2bea7e28585ebd14eacbd330d84073fe7f1", &parts));
    assert!(!verify(
        "d728d2bea7e28585ebd14eacbd330d84073fe7f1",
        &[parts[0], parts[1], parts[2], &V6_ENCRYPT[1..]]
    ));
    assert_eq!(
        c.decrypt_for(V6_ENCRYPT, "wwedab3d5fc43636d8").unwrap(),
        "<xml><ToUserName><![CDATA[wwedab3d5fc43636d8]]></ToUserName><FromUserName><![CDATA[WangChaoYi]]></FromUserName><CreateTime>1623301925</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[密文测试]]></Content><MsgId>6972028683187026694</MsgId><AgentID>1000005</AgentID></xml>"
    );
    assert_eq!(
        c.decrypt_for(V6_ENCRYPT, "1000005"),
        Err(CryptoError::WrongAppId { expected: "1000005".into(), found: "wwedab3d5fc43636d8".into() })
    );
}

#[test]
fn v7_a_full_32_byte_pad_block() {
    let c = Cipher::new(V3_KEY).unwrap();
    let enc = c.encrypt_with("abcdefghijklmnopqrstuvwxyz", "wxb11529c136998cb6", *b"aaaabbbbccccdddd");
    assert_eq!(
        enc,
        "jn1L23DB+6ELqJ+6bruv24kfnRA9CJ8qXRQfcTjuspbcu/BSVDHix6RSI3nK3z+fMd03dqZ5HIPCrQNNDa2xYd47apRHAo9FEf57/GQVWffqnF3WzheksoIGmk00BgBc"
    );
    assert_eq!(sign(&["pamtest", "1409304348", "xxxxxx", &enc]), "2b07674cc11d69d1eb5a852d4d239f5190949b19");
    assert_eq!(c.decrypt_for(&enc, "wxb11529c136998cb6").unwrap(), "abcdefghijklmnopqrstuvwxyz");
}

#[test]
fn every_pad_length_round_trips() {
    let c = Cipher::new(V3_KEY).unwrap();
    for n in 0..70 {
        let msg = "x".repeat(n);
        let enc = c.encrypt(&msg, "wxappid");
        assert_eq!(c.decrypt_for(&enc, "wxappid").unwrap(), msg, "length {n}");
    }
}

#[test]
fn garbage_is_refused_without_panicking() {
    let c = Cipher::new(V3_KEY).unwrap();
    assert_eq!(c.decrypt("not base64 !!!"), Err(CryptoError::NotBase64));
    assert_eq!(c.decrypt(""), Err(CryptoError::BadLength(0)));
    assert_eq!(c.decrypt("AAAA"), Err(CryptoError::BadLength(3)));
    // Truncated to one 32-byte block.
    let short = STANDARD.encode(&STANDARD.decode(V3_ENCRYPT).unwrap()[..32]);
    assert!(c.decrypt(&short).is_err());
    // Random blocks of every size: errors, never a panic.
    for blocks in 1..12 {
        for seed in 0..40u8 {
            let bytes: Vec<u8> =
                (0..blocks * 32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let _ = c.decrypt(&STANDARD.encode(&bytes));
        }
    }
    // A flipped byte in the last block breaks the padding or the AppID.
    let mut bytes = STANDARD.decode(V3_ENCRYPT).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    assert!(c.decrypt_for(&STANDARD.encode(&bytes), "wx2c2769f8efd9abc2").is_err());
    // The key must be 43 characters of base64.
    assert_eq!(Cipher::new("short").unwrap_err(), CryptoError::BadKey);
    assert_eq!(Cipher::new(&"!".repeat(43)).unwrap_err(), CryptoError::BadKey);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
