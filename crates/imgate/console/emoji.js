// WeChat's (and QQ's) classic emoticons: a follower's text carries them as codes
// (`/::)`) or names in brackets (`[Smile]`, `[微笑]`). Shown as the nearest emoji.

// [code, Chinese name, English name, emoji]
const TABLE = [
  ['/::)', '微笑', 'Smile', '🙂'], ['/::~', '撇嘴', 'Grimace', '😖'], ['/::B', '色', 'Drool', '😍'],
  ['/::|', '发呆', 'Scowl', '😳'], ['/:8-)', '得意', 'CoolGuy', '😎'], ['/::<', '流泪', 'Sob', '😢'],
  ['/::$', '害羞', 'Shy', '☺️'], ['/::X', '闭嘴', 'Silent', '🤐'], ['/::Z', '睡', 'Sleep', '😴'],
  ["/::'(", '大哭', 'Cry', '😭'], ['/::-|', '尴尬', 'Awkward', '😅'], ['/::@', '发怒', 'Angry', '😡'],
  ['/::P', '调皮', 'Tongue', '😜'], ['/::D', '呲牙', 'Grin', '😁'], ['/::O', '惊讶', 'Surprise', '😲'],
  ['/::(', '难过', 'Frown', '🙁'], ['/::+', '酷', 'Ruthless', '😎'], ['/:--b', '冷汗', 'Blush', '😓'],
  ['/::Q', '抓狂', 'Scream', '😫'], ['/::T', '吐', 'Puke', '🤮'], ['/:,@P', '偷笑', 'Chuckle', '🤭'],
  ['/:,@-D', '愉快', 'Joyful', '😊'], ['/::d', '白眼', 'Slight', '🙄'], ['/:,@o', '傲慢', 'Smug', '😤'],
  ['/::g', '饥饿', 'Hungry', '🤤'], ['/:|-)', '困', 'Drowsy', '😪'], ['/::!', '惊恐', 'Panic', '😱'],
  ['/::L', '流汗', 'Sweat', '😓'], ['/::>', '憨笑', 'Laugh', '😄'], ['/::,@', '悠闲', 'Commando', '😌'],
  ['/:,@f', '奋斗', 'Determined', '💪'], ['/::-S', '咒骂', 'Scold', '🤬'], ['/:?', '疑问', 'Shocked', '🤔'],
  ['/:,@x', '嘘', 'Shhh', '🤫'], ['/:,@@', '晕', 'Dizzy', '😵'], ['/::8', '疯了', 'Tormented', '😵‍💫'],
  ['/:,@!', '衰', 'Toasted', '😩'], ['/:!!!', '骷髅', 'Skull', '💀'], ['/:xx', '敲打', 'Hammer', '🔨'],
  ['/:bye', '再见', 'Wave', '👋'], ['/:wipe', '擦汗', 'Speechless', '😓'], ['/:dig', '抠鼻', 'NosePick', '🤏'],
  ['/:handclap', '鼓掌', 'Clap', '👏'], ['/:&-(', '糗大了', 'Shame', '😳'], ['/:B-)', '坏笑', 'Trick', '😏'],
  ['/:<@', '左哼哼', 'Bah！L', '😤'], ['/:@>', '右哼哼', 'Bah！R', '😤'], ['/::-O', '哈欠', 'Yawn', '🥱'],
  ['/:>-|', '鄙视', 'Pooh-pooh', '😒'], ['/:P-(', '委屈', 'Shrunken', '🥺'], ["/::'|", '快哭了', 'TearingUp', '🥹'],
  ['/:X-)', '阴险', 'Sly', '😈'], ['/:*', '亲亲', 'Kiss', '😘'], ['/:@x', '吓', 'Wrath', '😨'],
  ['/:8*', '可怜', 'Whimper', '🥺'], ['/:pd', '菜刀', 'Cleaver', '🔪'], ['/:<W>', '西瓜', 'Watermelon', '🍉'],
  ['/:beer', '啤酒', 'Beer', '🍺'], ['/:basketb', '篮球', 'Basketball', '🏀'], ['/:oo', '乒乓', 'PingPong', '🏓'],
  ['/:coffee', '咖啡', 'Coffee', '☕'], ['/:eat', '饭', 'Rice', '🍚'], ['/:pig', '猪头', 'Pig', '🐷'],
  ['/:rose', '玫瑰', 'Rose', '🌹'], ['/:fade', '凋谢', 'Wilt', '🥀'], ['/:showlove', '示爱', 'Lips', '💋'],
  ['/:heart', '爱心', 'Heart', '❤️'], ['/:break', '心碎', 'BrokenHeart', '💔'], ['/:cake', '蛋糕', 'Cake', '🎂'],
  ['/:li', '闪电', 'Lightning', '⚡'], ['/:bome', '炸弹', 'Bomb', '💣'], ['/:kn', '刀', 'Dagger', '🗡️'],
  ['/:footb', '足球', 'Soccer', '⚽'], ['/:ladybug', '瓢虫', 'Ladybug', '🐞'], ['/:shit', '便便', 'Poop', '💩'],
  ['/:moon', '月亮', 'Moon', '🌙'], ['/:sun', '太阳', 'Sun', '☀️'], ['/:gift', '礼物', 'Gift', '🎁'],
  ['/:hug', '拥抱', 'Hug', '🤗'], ['/:strong', '强', 'ThumbsUp', '👍'], ['/:weak', '弱', 'ThumbsDown', '👎'],
  ['/:share', '握手', 'Shake', '🤝'], ['/:v', '胜利', 'Peace', '✌️'], ['/:@)', '抱拳', 'Fight', '🙏'],
  ['/:jj', '勾引', 'Beckon', '👉'], ['/:@@', '拳头', 'Fist', '✊'], ['/:bad', '差劲', 'Pinky', '🤙'],
  ['/:lvu', '爱你', 'RockOn', '🤟'], ['/:no', 'NO', 'NO', '🙅'], ['/:ok', 'OK', 'OK', '👌'],
  ['/:love', '爱情', 'InLove', '💑'], ['/:<L>', '飞吻', 'Blowkiss', '😘'], ['/:jump', '跳跳', 'Waddle', '💃'],
  ['/:shake', '发抖', 'Tremble', '🥶'], ['/:<O>', '怄火', 'Aaagh', '😤'], ['/:circle', '转圈', 'Twirl', '💫'],
  ['/:kotow', '磕头', 'Kotow', '🙇'], ['/:turn', '回头', 'Dramatic', '🔄'], ['/:skip', '跳绳', 'JumpRope', '🪢'],
  ['/:oY', '投降', 'Surrender', '🏳️'],
  // Newer ones WeChat writes only by name.
  [null, '捂脸', 'Facepalm', '🤦'], [null, '奸笑', 'Smirk', '😏'], [null, '机智', 'Smart', '🤓'],
  [null, '皱眉', 'Concerned', '😟'], [null, '耶', 'Yeah!', '✌️'], [null, '红包', 'Packet', '🧧'],
  [null, '发', 'Rich', '🀄'], [null, '福', 'Blessing', '🧧'], [null, '鸡', 'Chick', '🐥'],
  [null, '嘿哈', 'Hey', '😆'], [null, '天啊', 'Wow', '😮'], [null, '吃瓜', 'Onlooker', '🍉'],
  [null, '加油', 'GoForIt', '💪'], [null, '汗', 'Sweats', '😓'], [null, '社会社会', 'Respect', '🙏'],
  [null, '旺柴', 'Doge', '🐶'], [null, '好的', 'NoProb', '👌'], [null, '打脸', 'MyBad', '🤕'],
  [null, '哇', 'Wow!', '🤩'], [null, '翻白眼', 'Boring', '🙄'], [null, '666', 'Awesome', '👍'],
  [null, '让我看看', 'LetMeSee', '👀'], [null, '叹气', 'Sigh', '😮‍💨'], [null, '苦涩', 'Hurt', '😣'],
  [null, '裂开', 'Broken', '💔'],
];

const MAP = new Map();
for (const [code, zh, en, emoji] of TABLE) {
  if (code) MAP.set(code, emoji);
  MAP.set(`[${zh}]`, emoji);
  MAP.set(`[${en}]`, emoji);
}
const escape = (s) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
// Longest first: `/::'(` before `/::(`.
const RE = new RegExp([...MAP.keys()].sort((a, b) => b.length - a.length).map(escape).join('|'), 'g');

/** Text with WeChat's emoticon codes replaced by emoji. */
export function emojify(text) {
  return String(text).replace(RE, (m) => MAP.get(m));
}
