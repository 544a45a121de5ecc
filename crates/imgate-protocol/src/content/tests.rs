//! Every message type WeChat sends, as in its official samples, and the seed's test body.

use super::*;
use serde_json::json;

fn check(xml: &str, want: Value) {
    let x = XmlMessage::parse(xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    let c = content_from_xml(&x).unwrap();
    let got = json!({"msg_type": c.msg_type, "code": c.code.0, "msg": c.msg});
    assert_eq!(got, want, "xml {xml}");
}

fn wx(body: &str) -> String {
    format!(
        "<xml>\n  <ToUserName><![CDATA[toUser]]></ToUserName>\n  <FromUserName><![CDATA[fromUser]]></FromUserName>\n  <CreateTime>1348831860</CreateTime>\n{body}\n</xml>"
    )
}

#[test]
fn official_message_samples() {
    check(
        &wx(
            "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId>",
        ),
        json!({"msg_type": "text", "code": 1001, "msg": {"content": "this is a test"}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>1234567890123456</MsgId><MsgDataId>xxxx</MsgDataId><Idx>xxxx</Idx>",
        ),
        json!({"msg_type": "text", "code": 1001, "msg": {"content": "hi", "extra": {"MsgDataId": "xxxx", "Idx": "xxxx"}}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[this is a url]]></PicUrl><MediaId><![CDATA[media_id]]></MediaId><MsgId>1234567890123456</MsgId>",
        ),
        json!({"msg_type": "image", "code": 1002, "msg": {"pic_url": "this is a url", "media_id": "media_id", "media_path": "this is a url"}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[media_id]]></MediaId><Format><![CDATA[Format]]></Format><MsgId>1234567890123456</MsgId>",
        ),
        json!({"msg_type": "voice", "code": 1003, "msg": {"media_id": "media_id", "format": "Format", "media_path": ""}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[media_id]]></MediaId><Format><![CDATA[amr]]></Format><Recognition><![CDATA[腾讯微信团队]]></Recognition><MediaId16K><![CDATA[m16]]></MediaId16K><MsgId>1234567890123456</MsgId>",
        ),
        json!({"msg_type": "voice", "code": 1003, "msg": {"media_id": "media_id", "format": "amr", "recognition": "腾讯微信团队", "media_id_16k": "m16", "media_path": ""}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[video]]></MsgType><MediaId><![CDATA[media_id]]></MediaId><ThumbMediaId><![CDATA[thumb_media_id]]></ThumbMediaId><MsgId>1234567890123456</MsgId>",
        ),
        json!({"msg_type": "video", "code": 1004, "msg": {"media_id": "media_id", "thumb_media_id": "thumb_media_id", "media_path": ""}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[shortvideo]]></MsgType><MediaId><![CDATA[media_id]]></MediaId><ThumbMediaId><![CDATA[thumb_media_id]]></ThumbMediaId><MsgId>1234567890123456</MsgId>",
        ),
        json!({"msg_type": "shortvideo", "code": 1005, "msg": {"media_id": "media_id", "thumb_media_id": "thumb_media_id", "media_path": ""}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[location]]></MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale><Label><![CDATA[位置信息]]></Label><MsgId>1234567890123456</MsgId>",
        ),
        json!({"msg_type": "location", "code": 1006, "msg": {"latitude": 23.134521, "longitude": 113.358803, "scale": 20.0, "label": "位置信息"}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[link]]></MsgType><Title><![CDATA[公众平台官网链接]]></Title><Description><![CDATA[公众平台官网链接]]></Description><Url><![CDATA[url]]></Url><MsgId>1234567890123456</MsgId>",
        ),
        json!({"msg_type": "link", "code": 1007, "msg": {"title": "公众平台官网链接", "description": "公众平台官网链接", "url": "url"}}),
    );
}

#[test]
fn official_event_samples() {
    check(
        &wx("<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>"),
        json!({"msg_type": "event", "code": 102, "msg": {"event": "subscribe"}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[qrscene_123123]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
        ),
        json!({"msg_type": "event", "code": 102, "msg": {"event": "subscribe", "event_key": "qrscene_123123", "ticket": "TICKET"}}),
    );
    check(
        &wx("<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[unsubscribe]]></Event>"),
        json!({"msg_type": "event", "code": 102, "msg": {"event": "unsubscribe"}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[SCENE_VALUE]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
        ),
        json!({"msg_type": "event", "code": 102, "msg": {"event": "SCAN", "event_key": "SCENE_VALUE", "ticket": "TICKET"}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[LOCATION]]></Event><Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>",
        ),
        json!({"msg_type": "event", "code": 102, "msg": {"event": "LOCATION", "latitude": 23.137466, "longitude": 113.352425, "precision": 119.38504}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[CLICK]]></Event><EventKey><![CDATA[EVENTKEY]]></EventKey>",
        ),
        json!({"msg_type": "event", "code": 102, "msg": {"event": "CLICK", "event_key": "EVENTKEY"}}),
    );
    check(
        &wx(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[VIEW]]></Event><EventKey><![CDATA[www.qq.com]]></EventKey><MenuId>MENUID</MenuId>",
        ),
        json!({"msg_type": "event", "code": 102, "msg": {"event": "VIEW", "event_key": "www.qq.com", "menu_id": "MENUID"}}),
    );
    // An event with nested elements, kept whole.
    check(
        &wx(
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[pic_weixin]]></Event><EventKey><![CDATA[6]]></EventKey><SendPicsInfo><Count>1</Count><PicList><item><PicMd5Sum><![CDATA[5a75aaca956d97be686719218f275c6b]]></PicMd5Sum></item></PicList></SendPicsInfo>",
        ),
        json!({"msg_type": "event", "code": 102, "msg": {"event": "pic_weixin", "event_key": "6",
            "extra": {"SendPicsInfo": {"Count": "1", "PicList": {"item": {"PicMd5Sum": "5a75aaca956d97be686719218f275c6b"}}}}}}),
    );
}

#[test]
fn the_seed_test_body() {
    let seed = "<xml>\n  <ToUserName>1</ToUserName>\n  <FromUserName>魏秀兰</FromUserName>\n  <CreateTime>1976-04-10 12:21:47</CreateTime>\n  <MsgType>enim</MsgType>\n  <Content>occaecat ut in fugiat dolor</Content>\n  <MsgId>19</MsgId>\n  <MsgDataId>27</MsgDataId>\n  <Idx>74</Idx>\n</xml>";
    check(
        seed,
        json!({"msg_type": "enim", "code": 1099, "msg": {"content": "occaecat ut in fugiat dolor", "MsgDataId": "27", "Idx": "74"}}),
    );
    let x = XmlMessage::parse(seed).unwrap();
    assert_eq!(dedupe_key_for_xml(&x).as_deref(), Some("wx|9:魏秀兰|19:1976-04-10 12:21:47|2:19"));
}

#[test]
fn elements_in_any_order_and_missing_type() {
    check(
        "<xml><Content>late</Content><MsgType>text</MsgType><ToUserName>a</ToUserName></xml>",
        json!({"msg_type": "text", "code": 1001, "msg": {"content": "late"}}),
    );
    let x = XmlMessage::parse("<xml><ToUserName>a</ToUserName></xml>").unwrap();
    assert_eq!(content_from_xml(&x), Err(ContentError::MissingType));
}

#[test]
fn dedupe_keys() {
    let ev =
        XmlMessage::parse(&wx("<MsgType>event</MsgType><Event>CLICK</Event><EventKey>K</EventKey>")).unwrap();
    assert_eq!(dedupe_key_for_xml(&ev).as_deref(), Some("wxe|8:fromUser|10:1348831860|5:CLICK|1:K"));
    let plain = XmlMessage::parse("<xml><MsgType>text</MsgType></xml>").unwrap();
    assert_eq!(dedupe_key_for_xml(&plain), None);
}
