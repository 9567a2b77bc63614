"""Everything the chat says, in one place: short, natural Simplified Chinese."""

from __future__ import annotations

QUIT_HINT = "（随时回复「退出」可取消）"

WELCOME = (
    '您好，欢迎关注东阳红十字"群众身边的红十字会"！\n'
    "回复「注册」成为志愿者，回复「AED」或发送位置查找最近的AED，回复「帮助」查看全部功能。"
)
WELCOME_BACK = "欢迎回来，{name}！回复「班次」看看附近需要人手的服务，回复「帮助」查看全部功能。"

HELP_HEAD = "您可以回复："
HELP_LINES = {
    "all": ["「注册」成为志愿者或更新信息", "「AED」或发送位置：最近的AED", "「急救」身边有人倒地时求助"],
    "volunteer": [
        "「班次」附近可报名的服务",
        "「报名 1」「取消 1」报名或取消",
        "「接受 1024」「拒绝 1024」回复任务邀请",
        "「签到」「签退」开始和结束服务",
        "「我的」我的安排和服务时长",
    ],
    "grid_worker": ["「上报」上报网格内的需求"],
    "coordinator": ["「广播」向志愿者发送通知", "「状态」待办上报、缺人班次和今日任务"],
}
HELP_TAIL = "任何时候回复「退出」可结束当前操作。"

NOT_ALLOWED = {
    "volunteer": "这项功能需要先注册成为志愿者，回复「注册」即可开始。",
    "volunteer_inactive": "您的志愿者账号目前不可用（{status}），如有疑问请联系所在镇街红十字会。",
    "grid_worker": "「上报」是网格员的功能，您目前没有权限。回复「帮助」查看可用功能。",
    "coordinator": "「{cmd}」是协调员的功能，您目前没有权限。回复「帮助」查看可用功能。",
}
STATUS_LABEL = {"pending": "待审核", "suspended": "已暂停", "left": "已退出"}

QUIT_DONE = "好的，已退出「{name}」。需要时随时再来。"
QUIT_NOTHING = "当前没有进行中的操作。回复「帮助」查看可用功能。"
DIALOG_EXPIRED = "上次的「{name}」太久没有回复，已自动结束。回复「{name}」可以重新开始。"
DIALOG_RESUME = "我们继续刚才的「{name}」：\n{prompt}"
DIALOG_NAMES = {"register": "注册", "report": "上报", "broadcast": "广播", "sos": "急救"}
UNKNOWN = "没太明白您的意思。回复「帮助」查看可用功能，或回复「班次」看看附近的服务。"
MEDIA = "收到{what}啦。我目前只看得懂文字和位置，回复「帮助」查看可用功能。"
MEDIA_WHAT = {"image": "图片", "video": "视频", "link": "链接", "voice": "语音", "unknown": "消息"}
ERROR = "抱歉，系统开小差了，请稍后再试。"

# registration
REG_ASK_NAME = "好的，先认识一下您。请问您的姓名？" + QUIT_HINT
REG_BAD_NAME = "姓名请用2到20个字，例如「王丽」。"
REG_ASK_PHONE = "{name}，您好！请输入您的手机号（11位）。"
REG_BAD_PHONE = "这个号码好像不完整，请输入11位手机号，例如 13812345678。"
REG_ASK_PLACE = "请发送您常在的位置（点「+」→「位置」），或直接回复所在村社/网格名称，如「东丰村」。"
REG_PLACE_FOUND = "已定位到：{where}。"
REG_PLACE_NONE = "没有找到「{text}」。请换个说法，如「东丰村」「东丰村第3网格」，或直接发送位置。"
REG_PLACE_FAR = "这个位置不在东阳市的网格范围内。请发送东阳市内的位置，或回复村社名称。"
REG_PLACE_PICK = "找到几个地方，请回复编号：\n{options}"
REG_ASK_SKILLS = "您有以下技能吗？可回复多个数字，如「1 3」，没有请回复「0」：\n{options}"
REG_BAD_SKILLS = "请回复技能前面的数字，如「1 3」；没有请回复「0」。"
REG_ASK_EXPIRY = "{skill}的有效期到哪天？例如 2027-06-30"
REG_BAD_EXPIRY = "请按 2027-06-30 这样的格式回复日期。"
REG_PAST_EXPIRY = "这个日期已经过了。证书过期的话请回复「0」，先不登记这项技能。"
REG_CONFIRM = "请确认：{name}，{phone}，{grid}，技能：{skills}。\n回复「确认」完成注册，回复「修改」重新填写。"
REG_CONFIRM_AGAIN = "请回复「确认」完成注册，或回复「修改」重新填写。"
REG_DONE = "注册成功，欢迎加入！回复「班次」看看附近需要人手的服务。"
REG_UPDATED = "信息已更新，谢谢！回复「我的」查看您的安排。"
REG_NO_SKILLS = "暂无"

SKILLS = [  # (code, label) in the order the chat numbers them
    ("first_aid", "救护员证"),
    ("driver", "驾驶"),
    ("medical", "医护"),
    ("psych", "心理支持"),
    ("water", "净水设备"),
]
SKILL_LABEL = {**dict(SKILLS), "aed": "AED培训"}
SKILLS_WITH_EXPIRY = {"first_aid"}

# report
REPORT_CATEGORIES = ["独居老人帮扶", "疑似走失老人", "爱心冰柜缺货", "AED故障", "其他"]
REP_ASK_CATEGORY = "请选择类别：" + "  ".join(f"{i} {c}" for i, c in enumerate(REPORT_CATEGORIES, 1))
REP_BAD_CATEGORY = "请回复1到5之间的数字。"
REP_ASK_TEXT = "简单描述一下情况？"
REP_BAD_TEXT = "描述请在2到300字之间。"
REP_ASK_PLACE_ONE = "地点就是您负责的「{grid}」吗？是请回复「是」，否则请发送位置。"
REP_ASK_PLACE_MANY = "地点在哪个网格？请回复编号，或发送位置：\n{options}"
REP_PLACE_OUTSIDE = "这个位置属于「{grid}」，不在您负责的网格内。您负责：{mine}。请发送负责网格内的位置，或回复编号选择网格。"
REP_PLACE_UNKNOWN = "这个位置不在东阳市的网格范围内，请重新发送位置，或回复编号选择网格。"
AED_FAULT = "AED故障"
REP_ASK_AED = "是哪台AED？请回复编号：\n{options}"
REP_NO_AED = "您负责的网格附近没有登记在用的AED。如需登记新的AED，请联系镇街红十字会。"
REP_AED_DONE = "已上报，编号 R{id}。「{name}」已暂停推荐，修复后恢复。谢谢您！"
AED_FAULT_NOTICE = "【AED故障 R{id}】{name}：{text}。已暂停向求助者推荐，请安排检修，修复后在后台恢复。"
REP_ASK_URGENCY = "紧急程度：1 一般  2 紧急"
REP_BAD_URGENCY = "请回复「1」一般，或「2」紧急。"
REP_ASK_HEADCOUNT = "需要几位志愿者？（默认1）"
REP_BAD_HEADCOUNT = "请回复1到20之间的数字。"
REP_ASK_WHEN = "什么时候前需要？如「今天16:00」「明天上午」，回复「尽快」表示越快越好。"
REP_BAD_WHEN = "没看懂这个时间。请回复如「今天16:00」「明天9点」或「尽快」。"
REP_DONE = "已上报，编号 R{id}。我们正在为您联系附近的志愿者，有人接单和完成时会通知您。"
YES = {"是", "是的", "对", "对的", "好", "好的", "嗯", "y", "yes", "ok", "1"}

# shifts and assignments
SHIFTS_HEAD = "您附近未来7天的班次："
SHIFTS_NONE = "附近未来7天暂时没有需要报名的班次，有新班次时我们会通知您。"
SHIFTS_TAIL = "回复「报名 1」报名。"
SHIFTS_MORE = "回复「更多」看更多。"
SHIFTS_END = "没有更多了。回复「班次」从头再看。"
SHIFT_NEED = "还差{n}人"
SHIFT_FULL = "已满（可排队）"
SHIFT_MINE = "已报名"
SIGNUP_OK = "报名成功：{title} · {place} · {when}。开始前我们会提醒您，到达后回复「签到」。"
SIGNUP_WAIT = "该班次已满，已为您排在候补第{pos}位。有人取消时我们会第一时间通知您。"
SIGNUP_ALREADY = "您已经报名了这个班次（{title} · {when}）。"
SIGNUP_OVERLAP = "这个班次和您已报名的「{other}」（{when}）时间冲突，不能同时报名。"
SIGNUP_CLOSED = "这个班次已经结束或取消了。回复「班次」看看其他的。"
SIGNUP_SKILLS = "这个班次需要{skills}，您还没有登记有效证书。回复「注册」可以补充技能。"
PICK_NUMBER = "请在「{cmd}」后面加上编号，如「{cmd} 1」。先回复「{list_cmd}」查看编号。"
BAD_NUMBER = "没有找到编号 {n}。请先回复「{list_cmd}」查看最新的编号。"
CANCEL_OK = "已取消：{title} · {when}。感谢告知，候补的志愿者会补上。"
CANCEL_LATE = "开始前{hours}小时内不能在线取消了。如确实来不了，请尽快联系网格员或协调员。"
CANCEL_NONE = "您没有报名这个班次。回复「我的」查看您的安排。"
ACCEPT_OK = "谢谢您！任务已确认：{title}，{when}，地点：{place}。"
ACCEPT_CONTACT = "联系人 {role} {name}（{phone}）。"
ACCEPT_TAIL = "出发前回复「签到」，完成后回复「签退」。"
ACCEPT_FULL = "谢谢您的热心！这个任务刚刚已有志愿者接下。附近还有其他需要，回复「班次」看看。"
ACCEPT_EXPIRED = "这个邀请已经过期了，谢谢您的关注！回复「班次」看看其他需要。"
ACCEPT_NONE = "没有找到发给您的任务 {id}。请核对编号，或回复「我的」查看。"
ACCEPT_ALREADY = "您已经接下这个任务了。出发前回复「签到」。"
DECLINE_OK = "好的，已为您婉拒任务 {id}。感谢您的回复！"
CHECKIN_OK = "签到成功：{title} · {when}。可发送位置确认到岗，完成后回复「签退」。"
CHECKIN_ALREADY = "您已经签到了：{title}。完成后回复「签退」。"
CHECKIN_NONE = "现在没有需要签到的安排（开始前1小时内可以签到）。回复「我的」查看安排。"
CHECKIN_FAR = "您的位置距离任务地点约{distance}，请到达后再发送位置确认。"
CHECKIN_HERE = "已确认到岗（距任务地点约{distance}）。完成后回复「签退」。"
CHECKOUT_OK = "辛苦了！本次服务 {hours} 小时已记入，您今年累计服务 {year} 小时。"
CHECKOUT_NONE = "您现在没有已签到的任务。"
MINE_HEAD = "您的安排："
MINE_NONE = "您目前没有安排。回复「班次」看看附近需要人手的服务。"
MINE_OFFERS = "待回复的任务邀请："
MINE_HOURS = "今年累计服务 {hours} 小时。"
MINE_LINK = '<a href="{url}">在手机页面查看和管理我的班次</a>'
MINE_TAIL = "回复「取消 1」可取消对应的班次。"
ASSIGNMENT_LABEL = {"accepted": "已确认", "waitlisted": "候补第{pos}位", "checked_in": "已签到"}

# AED
AED_HEAD = "离您最近的AED："
AED_LINE = '{i} {name} · 约{distance} · {hours}  <a href="{link}">查看地图</a> <a href="{amap}">高德</a>'
AED_CLOSED = "现在未开放，{opens}开放"
AED_NONE = "附近暂时没有登记的AED。"
AED_TAIL = "如遇心脏骤停，请立即拨打120，并开始胸外按压。"
AED_ASK_LOCATION = "请发送您的位置（点「+」→「位置」），我来找最近的AED。"
NEARBY_SHIFTS = "附近的班次："

# broadcast
BC_ASK_SCOPE = "发给谁？回复范围：「{all}」，或镇街/村社名称，如「{example}」。"
BC_BAD_SCOPE = "没有找到「{text}」，或它不在您负责的范围内。请回复「{all}」或镇街/村社名称。"
BC_ASK_SKILLS = "只发给有特定技能的人吗？回复技能编号，或「不限」：\n{options}"
BC_ASK_TEXT = "请输入广播内容（500字以内）。"
BC_BAD_TEXT = "内容请在5到500字之间。"
BC_PREVIEW = "预览：将发送给{scope} {total} 位志愿者"
BC_PREVIEW_DEFERRED = "（其中 {deferred} 位超过48小时未互动，将在其下次互动时收到）"
BC_PREVIEW_TAIL = "回复「确认」发送，「取消」放弃。"
BC_EMPTY = "这个范围内没有符合条件的志愿者，请回复「退出」后重新选择。"
BC_STARTED = "已开始发送（C{id}）。回复「状态」查看进度。"
BC_CANCELLED = "好的，这条广播不发了。"
BC_CONFIRM_AGAIN = "请回复「确认」发送，或「取消」放弃。"
ANY = {"不限", "全部", "都行", "0"}

# SOS
SOS_START = (
    "请立即拨打120！\n"
    "如果病人没有反应、没有正常呼吸，请马上开始胸外按压（用力、快速按压胸部正中）。\n"
    "请发送您的位置（点「+」→「位置」），我来呼叫附近的持证救护员，并找最近的AED。"
)
SOS_CALL_FIRST = "请立即拨打120！"
SOS_STATUS = {
    "started": "已呼叫附近的持证救护员（T{id}），有人接单会马上告诉您。",
    "repeat": "您的呼救正在处理（T{id}），附近的持证救护员已收到，有人接单会马上告诉您。",
    "outside": "这个位置不在东阳市的网格范围内，无法呼叫附近的救护员。",
}
SOS_CPR = "病人没有反应、没有正常呼吸时，请持续胸外按压（用力、快速按压胸部正中），有AED尽快取来使用。"

# status
STATUS_HEAD = "{scope} 工作概况："
STATUS_REPORTS = "待处理上报 {n} 件："
STATUS_REPORT = "R{id} {category} · {grid} · {age}前 · {state}"
STATUS_NO_REPORTS = "待处理上报：无"
STATUS_UNFILLED = "7天内缺人的班次 {n} 个："
STATUS_SHIFT = "{title} · {when} · {filled}/{slots}人"
STATUS_NO_UNFILLED = "7天内的班次都已满员。"
STATUS_TODAY = "今日任务 {n} 个，已签到 {checked_in} 人。"
STATUS_CAMPAIGNS = "最近的广播："
STATUS_CAMPAIGN = "C{id} 已发 {sent}/{targeted}，待下次互动 {deferred}，失败 {failed}（{state}）"
REPORT_STATE = {"open": "待接单", "taken": "已接单", "done": "已完成", "cancelled": "已取消"}
CAMPAIGN_STATE = {"draft": "草稿", "sending": "发送中", "done": "已完成", "cancelled": "已取消"}
LATE_REPLY_PREFIX = ""
